"""Running a sweep's trials with Ray Tune: the search space, the Tuner, progress, rows.

Tune does the searching and scheduling (grid and random search with
:class:`~ray.tune.search.basic_variant.BasicVariantGenerator`, one CPU per trial, as many
trials at once as the cluster has free CPUs); each trial is
:func:`train.sweep.trial.run_trial`. Nothing here trains.

Why trials report rows instead of raising: Tune would print a traceback per failed trial
and keep only its type; a row carries the one-line reason into the summary. A trial
whose process dies (out of memory, a killed node) still reaches us through
``on_trial_error`` and becomes a row too.

Why Tune's own files go to ``<out>/tune`` and not into the trial folders: a run folder
holds a heartsound run and nothing else (``heartsound convert`` reads it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from edge.errors import UsageError
from train.sweep.spec import ABBREVIATIONS, Axis, Sweep
from train.sweep.trial import TrialSetup, run_trial

TUNE_DIR = "tune"
TUNE_INSTALL_HINT = "pip install 'ray[tune]' (with the 'cluster' extra)"
NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 96


def import_tune():
    """``ray.tune``, or a one-line UsageError saying what to install."""
    try:
        from ray import tune
    except ImportError:
        raise UsageError(f"--sweep needs Ray Tune, which is not installed; {TUNE_INSTALL_HINT}"
                         ) from None
    return tune


def _domain(tune, axis: Axis, search: str):
    if axis.kind == "fixed":
        return axis.values[0]
    if axis.kind == "list":
        return tune.grid_search(list(axis.values)) if search == "grid" else \
            tune.choice(list(axis.values))
    lo, hi = axis.values
    if axis.kind == "randint":
        return tune.randint(int(lo), int(hi) + 1)  # the file's [lo, hi] is inclusive
    return (tune.uniform if axis.kind == "uniform" else tune.loguniform)(lo, hi)


def param_space(sweep: Sweep, tune) -> dict:
    """Tune's search space: training parameters flat, front-end fields under ``spec``."""
    space = {a.name: _domain(tune, a, sweep.search) for a in sweep.train}
    spec = {a.name: _domain(tune, a, sweep.search) for a in sweep.spec}
    return space | ({"spec": spec} if spec else {})


def flat_params(config: Mapping) -> dict:
    """``{"arch": "cnn", "spec.n_ceps": 13, ...}`` from a trial's nested config."""
    flat = {k: v for k, v in config.items() if k != "spec"}
    flat |= {f"spec.{k}": v for k, v in (config.get("spec") or {}).items()}
    return flat


def trial_name(index: int, config: Mapping, varying: tuple[str, ...]) -> str:
    """``t003-cnn-lr0.002-seed1``: the index keeps names unique, the rest says what varies."""
    flat = flat_params(config)
    parts = [f"t{index:03d}"]
    for key in varying:
        value = flat.get(key)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        short = key.removeprefix("spec.")
        parts.append(shown if key == "arch" else f"{ABBREVIATIONS.get(short, short)}{shown}")
    return NAME_SAFE.sub("-", "-".join(parts))[:MAX_NAME]


def _index(trial) -> int:
    """Tune numbers trials ``<experiment>_<00000>``, in the order it generates them."""
    tail = str(trial.trial_id).rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def tune_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune trainable: one training run, reported once as a row."""
    from ray import tune

    tune.report(run_trial(config, tune.get_context().get_trial_name(), setup))


def _callback_class(tune):
    class Progress(tune.Callback):
        """Rows as trials end, and a tqdm bar over trials with the best score so far."""

        def __init__(self, total: int, metric: str, enabled: bool) -> None:
            from tqdm import tqdm

            self.rows: dict[str, dict] = {}
            self.metric = metric
            self.best: float | None = None
            self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled,
                            dynamic_ncols=True, file=sys.stderr)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            row = dict(trial.last_result or {})
            keep = {k: v for k, v in row.items() if k in _ROW_KEYS or k.startswith("val_")
                    or k.startswith("test_")}
            if "trial" not in keep:
                keep = {"trial": str(trial), "error": "the trial ended without a result"}
            self._add(trial, keep)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._add(trial, {"trial": str(trial), "error": _death(trial)})

        def _add(self, trial, row: dict) -> None:
            row["params"] = flat_params(trial.config)
            row.setdefault("run_dir", "")
            self.rows[row["trial"]] = row
            score = row.get(self.metric)
            if not row.get("error") and isinstance(score, (int, float)):
                self.best = score if self.best is None else max(self.best, score)
            self.bar.set_postfix_str(f"last {row['trial']}"
                                     + (f", best {self.metric} {self.best:.3f}"
                                        if self.best is not None else ""))
            self.bar.update(1)

    return Progress


_ROW_KEYS = ("trial", "run_dir", "error", "threshold", "best_epoch", "epochs_run", "seconds",
             "split_id", "spec_hash", "model_params")


def _death(trial) -> str:
    """One line for a trial whose process failed outside run_trial (e.g. killed)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    return f"the trial's Ray worker failed ({text[:200] or 'no message'})"


def run_trials(sweep: Sweep, setup: TrialSetup, out: Path, progress: bool) -> list[dict]:
    """Run every trial on the connected Ray; one row per trial (order of completion)."""
    tune = import_tune()
    from ray.tune.search.basic_variant import BasicVariantGenerator

    varying = sweep.varying or ("arch",)
    callback = _callback_class(tune)(sweep.n_trials, sweep.metric, progress)
    trainable = tune.with_resources(tune.with_parameters(tune_trial, setup=setup),
                                    {"cpu": setup.threads})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(sweep, tune),
        tune_config=tune.TuneConfig(
            num_samples=sweep.num_samples if sweep.search == "random" else 1,
            search_alg=BasicVariantGenerator(random_state=sweep.search_seed),
            max_concurrent_trials=sweep.max_concurrent,
            trial_name_creator=lambda t: trial_name(_index(t), t.config, varying),
            trial_dirname_creator=lambda t: trial_name(_index(t), t.config, varying),
        ),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(out), verbose=0,
                                  callbacks=[callback]),
    )
    try:
        tuner.fit()
    finally:
        callback.bar.close()
    return list(callback.rows.values())
