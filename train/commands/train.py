"""`heartsound train`: train, evaluate by patient and by database, write a run folder.

Nothing heavy at import time: TensorFlow loads inside :func:`run`, so ``heartsound --help``
stays instant and the Raspberry Pi never imports it.

Why ``cnn`` is the default (measured on the full data, seed 0, same split): in float the
LSTM ``rnn`` had the better validation AUC (0.879 against 0.85-0.86) and trained 3x faster,
but after full-int8 conversion it lost much of it: on the 211 test recordings 33 decisions
changed and PhysioNet-b's AUC fell 0.876 -> 0.746 (PASCAL B 0.554 -> 0.415), while the CNN
changed 11 decisions (PhysioNet-b 0.839 -> 0.816, PASCAL B 0.663 -> 0.664). The device runs
the int8 model, so the CNN is the better screening model; ``crnn`` was below both in float
(validation AUC 0.816).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from train.commands.data import add_data_option
from train.models import DEFAULT_ARCH

if TYPE_CHECKING:
    from edge.spec import FeatureSpec

DEFAULT_RUNS = Path("runs")
TRAIN_THREADS = 2
"""TensorFlow's pool sizes for training (the 2-core machine the shipped model came from)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_option(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                        help="run folder to create (default: runs/<labels>-<arch>-seed<N>, "
                        "with -spec<hash> after it for a --spec run); "
                        "an existing one is refused without --force")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing run folder")
    parser.add_argument("--labels", choices=("screening", "condition"), default="screening",
                        help="screening: normal vs abnormal on PASCAL and PhysioNet "
                        "(default; CirCor carries murmur findings, not these classes); "
                        "condition: normal/murmur/extrahls/extrastole on PASCAL")
    parser.add_argument("--arch", default=DEFAULT_ARCH, metavar="NAME",
                        help=f"architecture: cnn, rnn or crnn (default {DEFAULT_ARCH}: the "
                        "best after int8 conversion, see train/trainer.py)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs (early stopping on validation AUC)")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, weights, "
                        "augmentation (default 0)")
    parser.add_argument("--min-se", type=float, default=None, metavar="SE",
                        help="validation sensitivity the threshold must keep (default 0.9)")
    parser.add_argument("--lodo", action=argparse.BooleanOptionalAction, default=False,
                        help="also train leave-one-database-out for each PhysioNet database "
                        "loaded (one more training per database: six with a-f; their "
                        "figures go into metrics.json and the model card). Off by default "
                        "to keep the default run short")
    parser.add_argument("--no-augment", action="store_true",
                        help="train on the original recordings only")
    parser.add_argument("--copies", type=int, default=None,
                        help="augmented copies per training recording (default 2)")
    parser.add_argument("--channel", type=float, default=None, metavar="SCALE",
                        help="random stethoscope response: cepstral offsets of SCALE x the "
                        "between-recording SD (default 0: off)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use about N labelled recordings per source (quick runs, tests)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="feature cache (default $HEARTSOUND_CACHE or "
                        "~/.cache/heartsound/features)")
    parser.add_argument("--no-cache", action="store_true", help="compute every feature")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for feature extraction (default 2)")
    parser.add_argument("--threads", type=int, default=TRAIN_THREADS, metavar="N",
                        help=f"TensorFlow threads (default {TRAIN_THREADS}). Kept fixed "
                        "so the same command trains the same model on any machine: the "
                        "pool size sets the order of float sums, and 1 and 2 threads give "
                        "different models from the same seed. Another N trains faster on "
                        "more cores but will not reproduce the shipped model's figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_spec_option(parser)
    add_sweep_options(parser)


def add_spec_option(parser: argparse.ArgumentParser) -> None:
    """--spec KEY=VALUE: one run on another front end, without writing a sweep file."""
    from edge.spec import NORMALISATIONS
    from train.sweep.spec import SWEEPABLE_SPEC_FIELDS

    parser.add_argument("--spec", action="append", default=None, metavar="KEY=VALUE",
                        help="set one FeatureSpec field (edge/spec.py) of this run's front "
                        "end; repeat for more. KEY: " + ", ".join(SWEEPABLE_SPEC_FIELDS)
                        + "; VALUE: a number (normalise: " + ", ".join(NORMALISATIONS)
                        + "). The fixed-point formats (*_q, out_frac_bits, log2_floor), "
                        "version, window and sample_rate_hz cannot be changed. Checked before "
                        "anything loads, like a sweep's spec; spec.json records the front end "
                        "used. Example: --spec hop_length=40 --spec n_ceps=20")


def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """--sweep and --ray; the format itself is documented in train/sweep/spec.py."""
    from train.sweep.spec import SWEEP_HELP

    parser.add_argument("--sweep", type=Path, default=None, metavar="SWEEP_YAML",
                        help="run a grid or random search with Ray Tune instead of one run: "
                        "one run folder per trial under OUT/trials/, summary ranked by "
                        "validation MAcc in OUT/sweep_summary.json and .csv (OUT: --out, "
                        "default runs/sweep-<file name>). Uses --data, --cache, --labels, "
                        "--limit, --force, --quiet; the file sets everything else "
                        "(see below and examples/sweep.yaml)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="with --sweep: run the trials on the Ray cluster at HOST:PORT "
                        "(the head's port, 6379 by default) or ray://HOST:10001; default: a "
                        "local Ray on this machine's CPUs, one CPU per trial")
    parser.epilog = SWEEP_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _config(args: argparse.Namespace):
    from dataclasses import replace

    from train.augment import NO_AUGMENT, AugmentConfig
    from train.trainer import TrainConfig

    augment = NO_AUGMENT if args.no_augment else AugmentConfig()
    if args.copies is not None and not args.no_augment:
        augment = replace(augment, copies=args.copies)
    if args.channel is not None and not args.no_augment:
        augment = replace(augment, channel=args.channel)
    cfg = TrainConfig(arch=args.arch, seed=args.seed, augment=augment,
                      workers=args.workers, progress=not args.quiet)
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.min_se is not None:
        cfg = replace(cfg, min_se=args.min_se)
    return cfg


def _check_args(args: argparse.Namespace) -> None:
    from edge.errors import UsageError

    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs}: need at least 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: need at least 1 recording per source")
    if args.min_se is not None and not 0 < args.min_se <= 1:
        raise UsageError(f"--min-se {args.min_se}: must be in (0, 1]")
    if args.channel is not None and not 0 <= args.channel <= 2:
        raise UsageError(f"--channel {args.channel}: must be in 0..2")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: need at least 1")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: need at least 1")


def spec_of_items(items: list[str] | None) -> FeatureSpec:
    """The run's FeatureSpec: DEFAULT_SPEC with each ``KEY=VALUE`` of ``--spec`` applied.

    Names and numbers are checked by the sweep's own code (train/sweep/spec.py), so a single
    run and a sweep accept exactly the same front ends and refuse them with the same words;
    only turning the command-line text into the field's type happens here.
    """
    from edge.errors import UsageError
    from edge.spec import DEFAULT_SPEC
    from train.sweep.spec import checked_feature_spec

    if not items:
        return DEFAULT_SPEC
    values: dict[str, object] = {}
    for item in items:
        name, value = _spec_item(item)
        if name in values:
            raise UsageError(f"--spec {item}: {name} is already set to {values[name]}; "
                             "give each field once")
        values[name] = value
    return checked_feature_spec(values, "--spec")


def _spec_item(item: str) -> tuple[str, object]:
    """(field, value of the field's declared type) of one ``KEY=VALUE``; UsageError if not."""
    from edge.errors import UsageError
    from edge.spec import DEFAULT_SPEC, field_type
    from train.sweep.spec import check_spec_field

    name, sep, text = (part.strip() for part in item.partition("="))
    if not sep or not name or not text:
        raise UsageError(f"--spec {item!r}: expected KEY=VALUE, e.g. --spec hop_length=40")
    check_spec_field(name, f"--spec {item}")
    kind = field_type(name)
    default = getattr(DEFAULT_SPEC, name)
    try:
        return name, kind(text)
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise UsageError(f"--spec {item}: {name} takes {wanted}, got {text!r}; e.g. "
                         f"--spec {name}={default} (the default)") from None


def _default_run_name(labels: str, arch: str, seed: int, spec: FeatureSpec) -> str:
    """``<labels>-<arch>-seed<N>``, plus the spec's hash for another front end, so a
    ``--spec`` run never collides with the default run's folder."""
    from edge.spec import DEFAULT_SPEC
    from train.features import spec_hash

    name = f"{labels}-{arch}-seed{seed}"
    return name if spec == DEFAULT_SPEC else f"{name}-spec{spec_hash(spec)[:8]}"


def run(args: argparse.Namespace) -> int:
    if args.sweep is not None:
        from train.sweep.command import run_sweep_command

        if args.spec:
            from edge.errors import UsageError

            raise UsageError(f"--spec is for a single run; with --sweep set the front end "
                             f"under params.spec in {args.sweep}")

        return run_sweep_command(args)
    if args.ray is not None:
        from edge.errors import UsageError

        raise UsageError(f"--ray {args.ray} works with --sweep only: a single training run "
                         "uses this machine")
    start = time.perf_counter()
    _check_args(args)
    spec = spec_of_items(args.spec)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide harmless C++ op-registry chatter
    from train.sweep.trial import limit_threads

    limit_threads(args.threads)
    from train.datasets import default_data_paths, get_label_set, load_records
    from train.features import default_cache_dir
    from train.models import get_architecture
    from train.pipeline import RunRequest, model_factory, run_training

    arch = get_architecture(args.arch)
    label_set = get_label_set(args.labels)
    config = _config(args)
    data = list(args.data) if args.data else default_data_paths()
    out = args.out or DEFAULT_RUNS / _default_run_name(label_set.name, arch.name, args.seed, spec)
    request = RunRequest(
        out=out, label_set=label_set, config=config, spec=spec,
        cache=None if args.no_cache else (args.cache or default_cache_dir()),
        data=data, limit=args.limit, lodo=args.lodo, force=args.force,
    )
    from train.pipeline import prepare_run_folder

    prepare_run_folder(out, args.force)  # refuse before loading anything heavy
    if args.spec:
        print(f"front end: {', '.join(args.spec)} ({spec.frames_per_window} frames x "
              f"{spec.n_ceps} cepstra per window)")
    records = load_records(data)
    build, describe = model_factory(arch.name, spec, label_set, config)
    metrics = run_training(request, records, build, describe, print)
    _print_summary(metrics, out, time.perf_counter() - start)
    return 0


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _print_gate(metrics: dict) -> None:
    """The familiarity gate: flagged per LODO database (MAcc on the rest) and per test
    source of this model (see edge.familiarity)."""
    from train.model_card import gate_line

    fam = metrics.get("familiarity")
    if not fam:
        return
    print(f"familiarity gate (unsure above {fam['reference']['threshold']:.2f} SD):")
    for name, res in metrics["lodo"].items():
        print(f"  LODO {name:<15} {gate_line(res['familiarity'])}")
    print("  test: " + ", ".join(f"{k} {v['flagged']}/{v['n']}"
                                 for k, v in fam["test"].items()) + " flagged")


def _print_summary(metrics: dict, out: Path, seconds: float) -> None:
    print(f"\nrun folder: {out}   threshold {metrics['threshold']:.4f} "
          f"(validation, Se >= {metrics['config']['min_se']})")
    from train.model_card import describe_targets, interval_text, verdict_lines

    print("test, per recording:      n   abn    Se     Sp   MAcc    AUC  Se@Sp70  MAcc 95 % CI")
    rows = dict(metrics["test"]["recording"])
    rows |= {f"LODO {k}": res["test"][k] for k, res in metrics["lodo"].items()}
    for name, m in rows.items():
        ci = (m.get("ci95") or {}).get("macc")
        shown = interval_text(ci) if ci else "n/a"
        print(f"  {name:<20} {m['n']:>5} {m['n_abnormal']:>5} {_fmt(m['se'])} {_fmt(m['sp'])} "
              f"{_fmt(m['macc'])} {_fmt(m['auc'])} {_fmt(m['se_at_sp70'])}    {shown}")
    _print_gate(metrics)
    t = metrics["targets"]
    print(f"targets: {describe_targets(t)} (95 % CI: patient-level bootstrap of the test "
          "split)")
    print("\n".join(verdict_lines(t)))
    print(f"total time {seconds:.0f} s", file=sys.stdout)
