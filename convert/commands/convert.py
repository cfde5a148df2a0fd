"""`heartsound convert RUN_DIR`: the run's Keras model to a full-int8 .tflite with metadata.

Beside it goes the float32 companion (``X.float32.tflite``, same metadata): the same
float model on the same LiteRT, which `heartsound bench` times as the fair baseline.
Prints what the microcontroller pays for the model (flatbuffer bytes, measured TFLite
Micro arena, ops, MACs) against the budget. A model that misses the budget is still
written (a Raspberry Pi runs it fine) but the command exits 1 saying which target failed.
Nothing heavy is imported at module level: TensorFlow only loads inside :func:`run`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="training run folder written by `heartsound train`")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="the .tflite to write (default: RUN_DIR/model_int8.tflite; its "
                        "float32 companion goes beside it as NAME.float32.tflite); an "
                        "existing file is refused without --force")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--model-version", default=None, metavar="TEXT",
                        help="version written into the metadata (default: "
                        "<labels>-<arch>-<sha256 of model.keras>)")
    parser.add_argument("--no-arena", action="store_true",
                        help="skip the TFLite Micro arena search (about 10 s)")


def _bias_line(model: bytes) -> str:
    from convert.bias_correction import summary
    from edge.model_meta import read_model_meta

    report = read_model_meta(model).document.get("bias_correction") or {}
    return f"{'int8 logit bias':<22}{summary(report)}"


def run(args: argparse.Namespace) -> int:
    import sys

    from convert.from_run import (
        check_output,
        convert_float_companion,
        convert_run,
        write_atomically,
    )
    from convert.run_folder import DEFAULT_OUTPUT, load_run_folder
    from convert.size_report import size_report
    from edge.model_meta import float_companion_path

    start = time.perf_counter()
    run_folder = load_run_folder(args.run_dir)
    out = args.out if args.out is not None else run_folder.path / DEFAULT_OUTPUT
    check_output(out, args.force)
    model = convert_run(run_folder, args.model_version)
    report = size_report(model, measure_arena=not args.no_arena)
    companion = float_companion_path(out)
    write_atomically(companion, convert_float_companion(run_folder, model))
    write_atomically(out, model)
    print(f"wrote {out}: {run_folder.architecture} full int8, "
          f"{len(run_folder.class_names)} classes ({', '.join(run_folder.class_names)}), "
          f"threshold {run_folder.threshold:.4f}")
    for line in report.lines():
        print(f"  {line}")
    print(f"  {'float32 companion':<22}{companion.name}, {companion.stat().st_size:,} bytes "
          "(the speed baseline of `heartsound bench`; never screened with)")
    print(f"  {_bias_line(model)}")
    print(f"done in {time.perf_counter() - start:.0f} s; next: heartsound verify {out} "
          f"--run {run_folder.path}")
    if not report.ok:
        print(f"heartsound: {out} misses the microcontroller budget: "
              f"{'; '.join(report.failures())}", file=sys.stderr)
        return 1
    return 0
