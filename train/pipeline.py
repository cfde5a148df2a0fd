"""One training run end to end: data, splits, the model, LODO, and the run folder.

A run folder holds everything the next steps need and nothing they must guess:

- ``model.keras``          the trained tf-keras model (input: int16 feature values as float)
- ``spec.json``            the FeatureSpec the features came from
- ``model.json``           class names, normal class, threshold, architecture, input shape:
                           what ``heartsound convert RUN_DIR`` writes into the .tflite metadata
- ``representative.npy``   int16 (n, frames, ceps) training windows from every source and
                           class, for full-int8 calibration
- ``splits.json``          recording names per split (conversion checks use val/test only)
- ``metrics.json``         every figure of the run (per source, per window, LODO, timing)
- ``training_curves.png``, ``confusion_matrix.png``, ``MODEL_CARD.md``
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError, UsageError
from edge.quality import MIN_SECONDS
from edge.spec import FeatureSpec
from train.datasets import LabelSet, Recording
from train.evaluate import evaluate_groups
from train.features import FeatureCache, spec_hash
from train.model_card import gate_line
from train.splits import DEFAULT_FRACTIONS, leave_one_database_out, split_groups, split_id
from train.targets import training_targets
from train.trainer import Outcome, TrainConfig, train_and_evaluate

METRICS_FORMAT = "heartsound-train-metrics/1"
LODO_PREFIX = "physionet-"
RUN_MARKERS = ("metrics.json", "model.json", "spec.json")
MIN_PER_LABEL = 4


@dataclass(frozen=True)
class RunRequest:
    """What the command asks for (all of it recorded in metrics.json)."""

    out: Path
    label_set: LabelSet
    config: TrainConfig
    spec: FeatureSpec
    cache: Path | None
    data: Sequence[Path]
    limit: int | None = None
    lodo: bool = False
    force: bool = False
    split_seed: int | None = None
    """Seed of the subset and the patient-level splits; None: ``config.seed``. A sweep
    fixes it so that trials with different training seeds still share one split."""

    @property
    def seed_of_splits(self) -> int:
        return self.config.seed if self.split_seed is None else self.split_seed


# ------------------------------------------------------------------------ run folder


def check_output_folder(out: Path, force: bool, markers: Sequence[str], kind: str) -> None:
    """Refuse an existing ``kind`` folder unless ``force``, and refuse even then a
    non-empty folder holding none of ``markers`` (never delete what we did not write)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{kind} folder {out} is a file: pass --out with a folder path")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{kind} folder {out} already exists: choose another --out, or "
                             "pass --force to replace it")
        if not any((out / m).exists() for m in markers):
            raise UsageError(f"{kind} folder {out} is not empty and holds no heartsound "
                             f"{kind} (no {'/'.join(markers[:2])}): refusing to delete it "
                             "even with --force; choose another --out")


def prepare_run_folder(out: Path, force: bool) -> None:
    """An empty run folder at ``out`` (see :func:`check_output_folder` for the refusals)."""
    check_output_folder(out, force, RUN_MARKERS, "run")
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- data


def limit_records(records: Sequence[Recording], limit: int, seed: int) -> list[Recording]:
    """At most about ``limit`` recordings per source, every fine label kept (for tests and
    quick looks): labels share the limit in proportion, at least MIN_PER_LABEL each."""
    rng = random.Random(f"limit/{seed}")
    by_cell: dict[tuple[str, str | None], list[Recording]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.name):
        by_cell[r.source, r.label].append(r)
    per_source = defaultdict(int)
    for (source, _), members in by_cell.items():
        per_source[source] += len(members)
    out = []
    for (source, label), members in sorted(by_cell.items(), key=lambda kv: str(kv[0])):
        if label is None:
            continue
        share = max(MIN_PER_LABEL, round(limit * len(members) / per_source[source]))
        rng.shuffle(members)
        out.extend(members[:share])
    return out


def select_and_split(records: Sequence[Recording], label_set: LabelSet, limit: int | None,
                     seed: int) -> tuple[list[Recording], dict]:
    """The records a run uses (``limit`` per source when given) and their splits: one
    function, so a sweep can know the split id its trials will have before they run."""
    chosen = limit_records(records, limit, seed) if limit else list(records)
    return chosen, main_splits(chosen, label_set, seed)


def main_splits(records: Sequence[Recording], label_set: LabelSet, seed: int) -> dict:
    """Patient-level splits of the label set's data sets (artifact kept: noise bank)."""
    usable = _in_label_set_datasets(records, label_set)
    return split_groups(usable, DEFAULT_FRACTIONS, seed, label_set=label_set)


def screenable(records: Sequence[Recording]) -> list[Recording]:
    """The recordings a device would screen: none under edge.quality.MIN_SECONDS, which
    the device answers "unsure: too short" (training on them, or measuring on them, would
    describe a model nobody runs)."""
    return [r for r in records if r.seconds >= MIN_SECONDS]


def _in_label_set_datasets(records: Sequence[Recording], label_set: LabelSet) -> list:
    records = screenable(records)
    if label_set.datasets is None:
        chosen = list(records)
    else:
        chosen = [r for r in records if r.dataset in label_set.datasets]
    if not label_set.select(chosen):
        raise DataError(f"no recordings with {label_set.name} labels in the data given "
                        f"(classes {', '.join(label_set.classes)}): check --data")
    return chosen


def lodo_sources(records: Sequence[Recording], label_set: LabelSet) -> list[str]:
    usable = label_set.select(records)
    sources = sorted({r.source for r in usable if r.source.startswith(LODO_PREFIX)})
    return sources if len({r.source for r in usable}) > 1 else []


# --------------------------------------------------------------------------- run


def model_factory(arch_name: str, spec: FeatureSpec, label_set: LabelSet,
                  config: TrainConfig) -> tuple[Callable[[], object], dict]:
    """``build`` (a fresh compiled model of the spec's input shape) and the model's
    description for metrics.json: the one recipe `heartsound train` and sweeps share."""
    from train.models import build_model, get_architecture
    from train.trainer import compile_model

    arch = get_architecture(arch_name)
    shape = (spec.frames_per_window, spec.n_ceps)

    def build():
        model = build_model(arch.name, shape, len(label_set.classes), config.seed)
        return compile_model(model, config)

    probe = build_model(arch.name, shape, len(label_set.classes), config.seed)
    describe = {"summary": arch.summary, "params": int(probe.count_params()),
                "file": "model.keras", "framework": "tf_keras"}
    return build, describe


def run_training(request: RunRequest, records: Sequence[Recording],
                 build: Callable[[], object], describe: dict,
                 log: Callable[[str], None] = print) -> dict:
    """The whole run; returns metrics (also written to the run folder)."""
    start = time.perf_counter()
    prepare_run_folder(request.out, request.force)
    ls, cfg = request.label_set, request.config
    cache = FeatureCache(request.cache, request.spec) if request.cache else None
    records, splits = select_and_split(records, ls, request.limit, request.seed_of_splits)
    log(f"training {cfg.arch} ({ls.name}: {', '.join(ls.classes)}) on "
        f"{len(ls.select(splits['train']))} recordings; "
        f"val {len(ls.select(splits['val']))}, test {len(ls.select(splits['test']))}")
    outcome = train_and_evaluate(splits, ls, request.spec, cache, cfg, build, log)
    for source, gate in outcome.familiarity["test"].items():
        log(f"familiarity gate on test {source}: {gate['flagged']}/{gate['n']} flagged")
    lodo = {}
    if request.lodo:
        for held_out in lodo_sources(records, ls):
            log(f"leave-one-database-out: training without {held_out}")
            lodo[held_out] = _lodo_one(records, held_out, request, cache, build, log)
    metrics = _metrics(request, records, splits, outcome, lodo, describe,
                       time.perf_counter() - start)
    write_run_folder(request, outcome, splits, metrics)
    return metrics


def _lodo_one(records, held_out: str, request: RunRequest, cache, build, log) -> dict:
    ls, cfg = request.label_set, request.config
    usable = _in_label_set_datasets(records, ls)
    splits = leave_one_database_out(usable, held_out, seed=cfg.seed, label_set=ls)
    out = train_and_evaluate(splits, ls, request.spec, cache, cfg, build, log)
    ref = out.familiarity["reference"]
    gate = {"threshold": ref["threshold"], "percentile": ref["percentile"],
            "reference_sources": sorted(ref["sources"]), **out.familiarity["test"][held_out]}
    log(f"  familiarity gate on {held_out}: {gate_line(gate)}")
    return {"threshold": out.threshold, "test": {held_out: out.test[held_out]},
            "val": out.val, "best_epoch": out.best_epoch, "seconds": out.seconds,
            "counts": out.counts, "familiarity": gate}


def _by_dataset(outcome: Outcome, splits, ls: LabelSet) -> dict:
    test = ls.select(splits["test"])
    datasets = [r.dataset for r in test]
    if len(set(datasets)) < 2:
        return {}
    res = evaluate_groups(outcome.test_y, outcome.test_probs, datasets, outcome.threshold,
                          list(ls.classes), groups=[r.group for r in test])
    res.pop("overall")
    return res


def _metrics(request: RunRequest, records, splits, outcome: Outcome, lodo: dict,
             describe: dict, seconds: float) -> dict:
    ls, cfg = request.label_set, request.config
    by_dataset = _by_dataset(outcome, splits, ls)
    recording = dict(outcome.test)
    overall = recording.pop("overall")
    recording = recording | by_dataset | {"overall": overall}
    metrics = {
        "format": METRICS_FORMAT,
        "label_set": ls.name,
        "class_names": list(ls.classes),
        "normal_class": "normal",
        "architecture": cfg.arch,
        "threshold": outcome.threshold,
        "best_epoch": outcome.best_epoch,
        "config": cfg.to_dict(),
        "spec": request.spec.to_dict(),
        "spec_hash": spec_hash(request.spec),
        "model": describe,
        "data": {
            "folders": [str(p) for p in request.data],
            "limit_per_source": request.limit,
            "split_seed": request.seed_of_splits,
            "split_id": split_id(splits),
            "counts": outcome.counts,
            "description": _describe_data(records, ls),
        },
        "validation": {"recording": outcome.val},
        "test": {"recording": recording, "window": outcome.test_windows},
        "lodo": lodo,
        "familiarity": outcome.familiarity,
        "history": outcome.history,
        "timing": {"total_seconds": seconds, "main_seconds": outcome.seconds,
                   "lodo_seconds": {k: v["seconds"] for k, v in lodo.items()}},
        "environment": _environment(),
    }
    metrics["targets"] = training_targets(metrics)
    return metrics


DATA_SETS = {
    "pascal": "PASCAL Classifying Heart Sounds (set A: iStethoscope iPhone app, public; set B: "
              "DigiScope, hospital in Recife)",
    "physionet2016": "PhysioNet/CinC 2016 training databases (a: MITHSDB, b: AADHSDB, "
                     "c: AUTHHSDB, d: UHAHSDB, e: DLUTHSDB, f: SUAHSDB)",
    "circor2022": "CirCor DigiScope 2022 (PhysioNet Challenge 2022; Littmann 3200, children "
                  "and pregnant women in Brazil)",
}


def _describe_data(records, ls: LabelSet) -> str:
    """The sentence of the card's Data section: the sources and data sets trained on."""
    chosen = ls.select(records)
    sources = sorted({r.source for r in chosen})
    sets = [DATA_SETS.get(d, d) for d in sorted({r.dataset for r in chosen})]
    return (f"Real recordings from {', '.join(sources)}: {' and '.join(sets)}. "
            "All resampled by the device's integer resampler to the front end's rate.")


def _environment() -> dict:
    from train.tensorflow_quiet import import_tensorflow

    tf = import_tensorflow()

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            # 0: TensorFlow chose (its pools were set before `--threads` could)
            "tf_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def write_run_folder(request: RunRequest, outcome: Outcome, splits, metrics: dict) -> None:
    """Model, spec, metadata for conversion, representative set, figures and card."""
    from train import model_card, plots

    out = request.out
    outcome.model.save(out / "model.keras")
    (out / "spec.json").write_text(request.spec.to_json() + "\n")
    model_json = {
        "class_names": metrics["class_names"],
        "normal_class": metrics["normal_class"],
        "threshold": metrics["threshold"],
        "architecture": metrics["architecture"],
        "label_set": metrics["label_set"],
        "input_shape": [request.spec.frames_per_window, request.spec.n_ceps],
        "input_units": "int16 feature values of edge.mfcc.windows, fed as float",
        "spec_hash": metrics["spec_hash"],
        "representative": "representative.npy",
        "training": _training_summary(metrics),
        "familiarity": metrics["familiarity"]["reference"],
    }
    _write_json(out / "model.json", model_json)
    np.save(out / "representative.npy", outcome.representative)
    _write_json(out / "splits.json", {
        "split_id": metrics["data"]["split_id"],
        **{k: sorted(r.name for r in v) for k, v in splits.items()},
        "paths": {k: sorted(str(r.path) for r in v) for k, v in splits.items()},
    })
    _write_json(out / "metrics.json", metrics)
    title = f"{metrics['label_set']} {metrics['architecture']}"
    plots.training_curves(outcome.history, outcome.best_epoch, out / "training_curves.png",
                          title)
    plots.confusion_matrices(*_confusion_panels(metrics), out / "confusion_matrix.png",
                             f"{title}: test recordings at threshold "
                             f"{metrics['threshold']:.3f}")
    (out / "MODEL_CARD.md").write_text(model_card.render(metrics))


def _confusion_panels(metrics: dict) -> tuple[dict, dict]:
    panels, names = {}, {}
    screen = ["normal", "abnormal"]
    for name, res in metrics["test"]["recording"].items():
        panels[name] = res["confusion"]
        names[name] = screen
    overall = metrics["test"]["recording"]["overall"]
    if "classes" in overall:
        panels["overall (classes)"] = overall["classes"]["confusion"]
        names["overall (classes)"] = metrics["class_names"]
    return panels, names


def _training_summary(metrics: dict) -> dict:
    rec = metrics["test"]["recording"]
    return {
        "label_set": metrics["label_set"],
        "split_id": metrics["data"]["split_id"],
        "test_recording": {k: {m: v[m] for m in ("se", "sp", "macc", "auc")}
                           for k, v in rec.items()},
        "lodo": {k: {m: v["test"][k][m] for m in ("se", "sp", "macc", "auc")}
                 for k, v in metrics["lodo"].items()},
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
