"""`heartsound verify MODEL --run RUN_DIR`: int8 vs float vs TFLite Micro on real recordings.

Prints a table and writes the JSON report (default: beside the model, ``<model>.verify.json``);
exits 1 with a one-line reason when a requirement fails (see :mod:`convert.verify`). With
``--targets`` it is the release check: the project's accuracy and device targets
(:mod:`train.targets`) are printed too, and any one missed exits 1.
Nothing heavy is imported at module level: TensorFlow only loads inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from train.commands.data import add_data_option

DEFAULT_MAX_MACC_DIFF_POINTS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL",
                        help="int8 .tflite written by `heartsound convert`")
    parser.add_argument("--run", type=Path, required=True, metavar="RUN_DIR",
                        help="the training run folder the model was converted from")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="where to write the JSON report (default: MODEL with "
                        "suffix .verify.json)")
    add_data_option(parser)
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="feature cache (default $HEARTSOUND_CACHE or "
                        "~/.cache/heartsound/features)")
    parser.add_argument("--no-cache", action="store_true", help="compute every feature")
    parser.add_argument("--max-macc-diff", type=float, default=DEFAULT_MAX_MACC_DIFF_POINTS,
                        metavar="POINTS", help="largest |MAcc int8 - MAcc float| allowed on "
                        "val and on test, in points (default %(default)s)")
    parser.add_argument("--no-tflite-runtime", action="store_true",
                        help="skip tflite-runtime 2.14 even when .venv-tflrt exists")
    parser.add_argument("--no-arena", action="store_true",
                        help="skip the size report's TFLite Micro arena search")
    parser.add_argument("--targets", action="store_true",
                        help="release check: also check the project's targets (per-database "
                        "test MAcc and Se, leave-one-database-out MAcc, int8 within 0.5 "
                        "points of float, model and arena size, training time) and exit 1 "
                        "if any is missed")


def run(args: argparse.Namespace) -> int:
    from convert.run_folder import load_run_folder
    from convert.size_report import size_report
    from convert.verify import check_model_matches_run, render, verify
    from edge.errors import UsageError
    from edge.interpreter import model_bytes
    from edge.model_meta import read_model_meta
    from train.features import default_cache_dir

    if args.max_macc_diff < 0:
        raise UsageError(f"--max-macc-diff {args.max_macc_diff}: must be 0 or more points")
    out = args.json or args.model.with_suffix(".verify.json")
    meta = read_model_meta(args.model)  # bad input is refused before any heavy work
    run_folder = load_run_folder(args.run)
    check_model_matches_run(meta, run_folder)
    size = size_report(model_bytes(args.model), measure_arena=not args.no_arena).to_dict()
    report = verify(args.model, run_folder, data=args.data,
                    cache_dir=None if args.no_cache else (args.cache or default_cache_dir()),
                    max_macc_diff=args.max_macc_diff / 100.0,
                    with_tflite_runtime=not args.no_tflite_runtime, size=size,
                    progress=sys.stderr.isatty())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"report written to {out}")
    if not report["pass"]:
        print(f"heartsound: verification failed: {report['reason']}", file=sys.stderr)
        return 1
    if args.targets:
        return _check_targets(run_folder.metrics, report)
    return 0


def _check_targets(metrics: dict, report: dict) -> int:
    """Print every target with its figure; 1 when any is missed (a release check)."""
    from train.targets import release_checks

    checks = release_checks(metrics, report)
    for name, (ok, figure) in checks.items():
        print(f"  {'MET ' if ok else 'MISS'} {name}{figure}")
    missed = [name for name, (ok, _) in checks.items() if not ok]
    if missed:
        print(f"heartsound: {len(missed)} of {len(checks)} targets missed (first: {missed[0]}); "
              "the model is not ready for release", file=sys.stderr)
        return 1
    print(f"targets: all {len(checks)} met")
    return 0
