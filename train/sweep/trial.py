"""One sweep trial: an ordinary training run, in its own run folder, reduced to one row.

A trial is :func:`train.pipeline.run_training`, exactly what ``heartsound train`` runs, so
its folder converts and verifies like any other run. What differs is set by the sweep:

- the split seed is the sweep's, not the trial's training seed, so trials with different
  seeds still train and validate on the same patients (``metrics.json`` ``data.split_id``
  shows it, and the summary checks it);
- one CPU per trial: feature extraction in-process and TensorFlow's thread pools at
  :attr:`TrialSetup.threads`, so N trials on N CPUs do not fight over cores;
- any failure becomes a row with its error instead of an exception: one bad combination
  (a model that cannot be built for a spec, a split without a class) must not end a sweep.

Runs inside a Ray worker, possibly on another node: every path in :class:`TrialSetup` is
absolute and must exist there (shared storage mounted at the same path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from edge.errors import HeartsoundError
from train.sweep.spec import feature_spec

#: Error texts are cut to this many characters in rows and tables.
MAX_ERROR_CHARS = 300
LOG_FILE = "train.log"
#: Figures of a finished trial copied into its row (validation: overall, recording level).
VAL_FIGURES = ("macc", "auc", "se", "sp")


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one sweep shares (all paths absolute)."""

    data: tuple[str, ...]
    label_set: str
    limit: int | None
    split_seed: int
    cache: str | None
    trials_dir: str
    threads: int = 1


def trial_config(params: Mapping, threads: int = 1):
    """(TrainConfig, FeatureSpec) of one trial's parameters (``spec`` nested)."""
    from train.augment import AugmentConfig
    from train.models import DEFAULT_ARCH
    from train.trainer import TrainConfig

    flat = {k: v for k, v in params.items() if k != "spec"}
    augment = AugmentConfig()
    for key in ("copies", "channel"):
        if key in flat:
            augment = replace(augment, **{key: flat.pop(key)})
    config = TrainConfig(arch=flat.pop("arch", DEFAULT_ARCH), augment=augment,
                         workers=threads, progress=False)
    config = replace(config, **flat)
    return config, feature_spec(params.get("spec", {}))


def limit_threads(threads: int) -> None:
    """TensorFlow's pools at ``threads`` (before TF starts; a reused process keeps its own)."""
    from train.tensorflow_quiet import import_tensorflow

    tf = import_tensorflow()

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process: its pools stay as they are


def run_trial(params: Mapping, name: str, setup: TrialSetup) -> dict:
    """Train one trial into ``<trials_dir>/<name>``; its row (``error`` set on failure)."""
    out = Path(setup.trials_dir) / name
    lines: list[str] = []
    row: dict = {"trial": name, "run_dir": str(out), "error": None}
    try:
        metrics = _train(params, out, setup, lines.append)
        row |= row_of_metrics(metrics)
    except Exception as exc:  # noqa: BLE001 - a failed trial is a row, never the sweep's end
        row["error"] = error_text(exc)
        lines.append(f"failed: {row['error']}")
    if out.is_dir():
        (out / LOG_FILE).write_text("\n".join(lines) + "\n")
    return row


def _train(params: Mapping, out: Path, setup: TrialSetup, log) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    limit_threads(setup.threads)
    from train.datasets import get_label_set, load_records
    from train.pipeline import RunRequest, model_factory, run_training

    config, spec = trial_config(params, setup.threads)
    label_set = get_label_set(setup.label_set)
    data = [Path(d) for d in setup.data]
    request = RunRequest(
        out=out, label_set=label_set, config=config, spec=spec,
        cache=Path(setup.cache) if setup.cache else None, data=data, limit=setup.limit,
        split_seed=setup.split_seed,
    )
    build, describe = model_factory(config.arch, spec, label_set, config)
    return run_training(request, load_records(data), build, describe, log)


def row_of_metrics(metrics: dict) -> dict:
    """The figures a summary ranks and shows, from a run's metrics.json."""
    val = metrics["validation"]["recording"]["overall"]
    test = metrics["test"]["recording"]["overall"]
    return {
        **{f"val_{k}": val.get(k) for k in VAL_FIGURES},
        "test_macc": test.get("macc"), "test_auc": test.get("auc"),
        "threshold": metrics["threshold"], "best_epoch": metrics["best_epoch"],
        "epochs_run": len(metrics["history"].get("loss", [])),
        "seconds": round(metrics["timing"]["total_seconds"], 1),
        "split_id": metrics["data"]["split_id"],
        "spec_hash": metrics["spec_hash"],
        "model_params": metrics["model"]["params"],
    }


def error_text(exc: BaseException) -> str:
    """One line: a HeartsoundError's own message, else the exception's type and first line."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if not isinstance(exc, HeartsoundError):
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first[:MAX_ERROR_CHARS]

