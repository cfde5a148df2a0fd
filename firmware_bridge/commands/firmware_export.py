"""Export a model as firmware sources: C array, model header, front end, protocol, app.

Writes OUT/src (the app with the model as an alignas(16) C array, hs_model.h with the
FeatureSpec, classes, threshold, quantisation, digests and the arena size measured with
TFLite Micro, the front-end tables, the C99 front end and protocol), board files for
QEMU's mps2-an386 and the host, TFLite Micro's sources and a PlatformIO project for real
boards. Build it with CMake (-DHS_EXPORT_DIR=OUT) or `pio run` in OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write (must not exist unless --force)")
    parser.add_argument("--model", type=Path,
                        help="int8 .tflite with heartsound metadata (default: the shipped one)")
    parser.add_argument("--arena", type=int, metavar="BYTES",
                        help="tensor arena size instead of measuring it with TFLite Micro")
    parser.add_argument("--all-ops", action="store_true",
                        help="register every op of app/model_ops.h, not only the model's")
    parser.add_argument("--no-tflm", action="store_true",
                        help="leave TFLite Micro's sources out (CMake builds use the tree)")
    parser.add_argument("--tflm-tree", type=Path, metavar="DIR",
                        help="the pinned TFLite Micro source tree (default: $HEARTSOUND_TFLM_DIR, "
                        "or ../shared/third_party/tflite-micro beside a checkout); a pip "
                        "install has none: pass this or --no-tflm")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.interpreter import model_bytes
    from edge.screening import default_model_path
    from firmware_bridge.export import export_firmware

    if args.arena is not None and args.arena <= 0:
        raise UsageError("--arena must be a positive number of bytes")
    path = args.model or default_model_path()
    result = export_firmware(model_bytes(path), args.out, name=str(path),
                             arena_bytes=args.arena, all_ops=args.all_ops, force=args.force,
                             with_tflm=not args.no_tflm, tflm_dir=args.tflm_tree)
    info = {"out": str(result.out_dir), "model": str(path), "model_sha256": result.model_sha256,
            "spec_sha256": result.spec_sha256, "arena_bytes": result.arena_bytes,
            "arena_measured": result.arena_measured, "ops": list(result.ops),
            "src": list(result.files)}
    if args.json:
        print(json.dumps(info))
        return 0
    measured = (f"measured {result.arena_measured:,} B + margin" if result.arena_measured
                else "given")
    print(f"exported {path} to {result.out_dir}\n  model {result.model_sha256[:16]}, front end "
          f"{result.spec_sha256[:16]}, arena {result.arena_bytes:,} B ({measured})\n  ops "
          f"{', '.join(result.ops)}\n  build: cmake -S firmware_bridge -B build "
          f"-DHS_EXPORT_DIR={result.out_dir}  or  cd {result.out_dir} && pio run")
    return 0
