"""Read a training run folder (written by train/pipeline.py) for conversion and verification.

One reader so that ``heartsound convert`` and ``heartsound verify`` refuse the same bad
folders with the same one-line messages, and never guess: the spec, the classes, the
threshold and the splits all come from the files the training run wrote. Standard library
and numpy only; the Keras model is loaded by whoever needs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelError, SpecError, UsageError
from edge.spec import FeatureSpec

MODEL_FILE = "model.keras"
SPEC_FILE = "spec.json"
MODEL_JSON = "model.json"
REPRESENTATIVE_FILE = "representative.npy"
SPLITS_FILE = "splits.json"
METRICS_FILE = "metrics.json"
RUN_FILES = (MODEL_FILE, SPEC_FILE, MODEL_JSON, REPRESENTATIVE_FILE, SPLITS_FILE, METRICS_FILE)
MODEL_JSON_KEYS = ("class_names", "normal_class", "threshold", "architecture")
DEFAULT_OUTPUT = "model_int8.tflite"
"""Where ``heartsound convert RUN_DIR`` writes without ``--out``: inside the run folder."""


@dataclass(frozen=True)
class RunFolder:
    """The checked contents of one training run folder (representative set read lazily)."""

    path: Path
    spec: FeatureSpec
    model_info: dict
    metrics: dict
    splits: dict

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.model_info["class_names"]]

    @property
    def normal_class(self) -> str | None:
        return self.model_info.get("normal_class")

    @property
    def threshold(self) -> float:
        return float(self.model_info["threshold"])

    @property
    def architecture(self) -> str:
        return str(self.model_info["architecture"])

    @property
    def label_set(self) -> str:
        return str(self.model_info.get("label_set") or self.metrics.get("label_set")
                   or "screening")

    def representative(self) -> np.ndarray:
        """The int16 calibration windows; a damaged file is a one-line ModelError."""
        path = self.path / REPRESENTATIVE_FILE
        try:
            rep = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"{path}: not a readable numpy array ({first}); train the run "
                             "again to rewrite it") from None
        return rep

    def split_names(self, split: str) -> list[str]:
        """Recording names (``source/file.wav``) of one split, as training saved them."""
        names = self.splits.get(split)
        if not isinstance(names, list):
            raise UsageError(f"{self.path / SPLITS_FILE}: no '{split}' split; train the run "
                             "again with this heartsound")
        return [str(n) for n in names]

    def training_summary(self) -> dict:
        """What the model's metadata says about its training data (small: it ships inside
        the .tflite, so per-epoch history and environment stay in metrics.json)."""
        data = self.metrics.get("data", {})
        return {
            "label_set": self.label_set,
            "split_id": data.get("split_id"),
            "description": data.get("description"),
            "limit_per_source": data.get("limit_per_source"),
            "counts": data.get("counts"),
            "best_epoch": self.metrics.get("best_epoch"),
            "test_recording": self.model_info.get("training", {}).get("test_recording"),
            "lodo": self.model_info.get("training", {}).get("lodo"),
        }


def load_run_folder(path: str | Path) -> RunFolder:
    """Check that ``path`` is a complete run folder and read its small files."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: not a folder; pass the run folder written by "
                         "`heartsound train --out RUN_DIR`")
    missing = [name for name in RUN_FILES if not (path / name).exists()]
    if missing:
        raise UsageError(f"{path}: not a training run folder (no {', '.join(missing)}); pass "
                         "the folder written by `heartsound train --out RUN_DIR`")
    try:
        spec = FeatureSpec.from_json((path / SPEC_FILE).read_text())
    except SpecError as exc:
        raise SpecError(f"{path / SPEC_FILE}: {exc}") from None
    model_info = _read_json(path / MODEL_JSON)
    lacking = [k for k in MODEL_JSON_KEYS if k not in model_info]
    if lacking:
        raise UsageError(f"{path / MODEL_JSON}: lacks {', '.join(lacking)}; train the run "
                         "again with this heartsound")
    return RunFolder(path, spec, model_info, _read_json(path / METRICS_FILE),
                     _read_json(path / SPLITS_FILE))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({type(exc).__name__}); train the run "
                         "again") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object; train the run again")
    return data
