"""The sweep file: what a training sweep searches over, read and checked before any trial.

A sweep is YAML (see ``examples/sweep.yaml`` and :data:`SWEEP_HELP`). Everything a person
can get wrong is refused here, with one line naming the key, so a sweep never spends an
hour of trials to fail on the last combination: unknown keys, values of the wrong type,
empty lists, distributions in a grid, and every combination of front-end numbers (each
must pass :meth:`edge.spec.FeatureSpec.validate`).

Why only some FeatureSpec fields may vary: the sweep explores modelling choices (how many
bands and cepstra, frame and window lengths, band edges, pre-emphasis, normalisation).
The fixed-point formats (``*_q``, ``out_frac_bits``, ``log2_floor``) are numerics whose
bounds :mod:`edge.mfcc` proves for the shipped values, ``version`` is the contract, and
``window`` has one choice; a sweep that changed them would measure the arithmetic, not
the model. ``sample_rate_hz`` stays too: PhysioNet is recorded at 2 kHz, so a higher rate
adds nothing but cost, and a lower one cuts the murmur bands the mel bank keeps.

No Ray and no TensorFlow here: this module answers instantly and is unit-tested alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from edge.errors import HeartsoundError, UsageError
from edge.spec import DEFAULT_SPEC, FeatureSpec

SEARCHES = ("grid", "random")
#: Ranking metrics: validation recording-level figures (never test: that would tune on it).
METRICS = {"val_macc": "validation MAcc", "val_auc": "validation AUC"}
DEFAULT_METRIC = "val_macc"
#: Refuse larger sweeps: a typo like ``seed: [0..1000]`` should not book the cluster.
MAX_TRIALS = 1000
#: FeatureSpec combinations checked one by one at most (random search over huge lists).
MAX_SPEC_CHECKS = 10000

SWEEPABLE_SPEC_FIELDS = ("n_mels", "n_ceps", "f_min_hz", "f_max_hz", "frame_length",
                         "hop_length", "n_fft", "preemph_q15", "window_s", "window_hop_s",
                         "normalise")
"""FeatureSpec fields a sweep may vary and ``heartsound train --spec`` may set (the module
docstring says why not the others)."""

DISTRIBUTIONS = ("uniform", "loguniform", "randint")
TOP_KEYS = ("search", "num_samples", "metric", "split_seed", "search_seed",
            "max_concurrent", "params")


@dataclass(frozen=True)
class TrainParam:
    """One training hyper-parameter a sweep may set: its type and its allowed range."""

    kind: type
    low: float
    high: float
    help: str


def _architectures() -> tuple[str, ...]:
    from train.models import ARCHITECTURES  # light: TensorFlow loads only to build

    return tuple(ARCHITECTURES)


TRAIN_PARAMS: dict[str, TrainParam] = {
    "seed": TrainParam(int, 0, 2**31 - 1, "weights, augmentation and epoch windows"),
    "epochs": TrainParam(int, 1, 10000, "maximum epochs (early stopping on val AUC)"),
    "batch_size": TrainParam(int, 1, 65536, "windows per gradient step"),
    "learning_rate": TrainParam(float, 1e-7, 1.0, "Adam's initial rate (cosine decay)"),
    "patience": TrainParam(int, 1, 10000, "epochs without improvement before stopping"),
    "min_se": TrainParam(float, 1e-9, 1.0, "validation sensitivity the threshold keeps"),
    "max_windows_per_recording": TrainParam(int, 1, 10000, "windows per recording and epoch"),
    "copies": TrainParam(int, 0, 100, "augmented copies per training recording (0: none)"),
    "channel": TrainParam(float, 0.0, 2.0, "random stethoscope response scale (0: off)"),
}
"""Training hyper-parameters (besides ``arch``) and their bounds; names as TrainConfig's."""

#: Short names for trial folder names.
ABBREVIATIONS = {"learning_rate": "lr", "batch_size": "bs", "epochs": "ep",
                 "max_windows_per_recording": "mw", "patience": "pat"}

SWEEP_HELP = """\
sweep file (YAML), e.g. examples/sweep.yaml:
  search: grid              # grid: every combination of the lists; random: num_samples draws
  # num_samples: 8          # random only (a grid refuses it)
  metric: val_macc          # ranking: val_macc (default) or val_auc (validation, recording level)
  split_seed: 0             # the patient-level split every trial shares (default 0)
  search_seed: 0            # random only: seed of the draws (default 0)
  max_concurrent: 2         # optional cap on trials at once (default: one per free CPU)
  params:
    arch: [cnn, crnn]                # cnn, rnn, crnn
    seed: [0, 1]
    learning_rate: 0.002             # a scalar is fixed for every trial
    epochs: 20
    # also: batch_size, patience, min_se, max_windows_per_recording, copies, channel
    # random only: {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]} (inclusive)
    spec:                            # FeatureSpec fields (edge/spec.py): n_mels, n_ceps,
      n_ceps: [13, 16]               # f_min_hz, f_max_hz, frame_length, hop_length, n_fft,
      n_mels: [20, 26]               # preemph_q15, window_s, window_hop_s, normalise
"""


@dataclass(frozen=True)
class Axis:
    """One parameter of the search: fixed, a list (grid axis / random choice) or a range."""

    name: str
    kind: str  # "fixed", "list" or one of DISTRIBUTIONS
    values: tuple

    @property
    def varies(self) -> bool:
        return self.kind != "fixed" and not (self.kind == "list" and len(self.values) == 1)


@dataclass(frozen=True)
class Sweep:
    """A checked sweep file."""

    path: Path
    search: str
    num_samples: int
    metric: str
    split_seed: int
    search_seed: int
    max_concurrent: int | None
    train: tuple[Axis, ...]
    spec: tuple[Axis, ...]
    text: str = field(repr=False, default="")

    @property
    def n_trials(self) -> int:
        if self.search == "random":
            return self.num_samples
        return math.prod(len(a.values) for a in (*self.train, *self.spec) if a.kind == "list")

    @property
    def varying(self) -> tuple[str, ...]:
        """Names (``spec.`` prefixed for the front end) of what differs between trials."""
        return tuple([a.name for a in self.train if a.varies]
                     + [f"spec.{a.name}" for a in self.spec if a.varies])

    def to_dict(self) -> dict:
        def axes(group):
            return {a.name: {"kind": a.kind, "values": list(a.values)} for a in group}

        return {"search": self.search, "num_samples": self.num_samples, "metric": self.metric,
                "split_seed": self.split_seed, "search_seed": self.search_seed,
                "max_concurrent": self.max_concurrent, "params": axes(self.train),
                "spec": axes(self.spec), "n_trials": self.n_trials}


# ------------------------------------------------------------------------- reading


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; UsageError (one line naming the key) if anything is off."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"sweep file {path} not found; see examples/sweep.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"sweep file {path} cannot be read ({exc}); pass a YAML file") from None
    return parse_sweep(text, path)


def parse_sweep(text: str, path: str | Path = "<sweep>") -> Sweep:
    """A :class:`Sweep` from YAML text (``path`` only names it in messages)."""
    path = Path(path)
    data = _yaml(text, path)
    where = f"sweep file {path}"
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping with 'params' (and 'search', ...), "
                         f"got {type(data).__name__}; see examples/sweep.yaml")
    _no_unknown(data, TOP_KEYS, where, "key")
    search = data.get("search", "grid")
    if search not in SEARCHES:
        raise UsageError(f"{where}: search: {search!r} is not one of {', '.join(SEARCHES)}")
    metric = data.get("metric", DEFAULT_METRIC)
    if metric not in METRICS:
        raise UsageError(f"{where}: metric: {metric!r} is not one of {', '.join(METRICS)}")
    num_samples = _top_int(data, "num_samples", 1, where, low=1)
    if "num_samples" in data and search == "grid":
        raise UsageError(f"{where}: num_samples is for search: random; a grid runs every "
                         "combination once (list more seeds to repeat it)")
    train, spec = _params(data.get("params"), search, where)
    concurrent = data.get("max_concurrent")
    sweep = Sweep(
        path=path, search=search, num_samples=num_samples, metric=metric,
        split_seed=_top_int(data, "split_seed", 0, where),
        search_seed=_top_int(data, "search_seed", 0, where),
        max_concurrent=None if concurrent is None else _top_int(data, "max_concurrent", 1,
                                                                where, low=1),
        train=train, spec=spec, text=text,
    )
    if sweep.n_trials > MAX_TRIALS:
        raise UsageError(f"{where}: {sweep.n_trials} trials is more than {MAX_TRIALS}; "
                         "shorten the lists or use search: random with num_samples")
    check_spec_combinations(spec, where)
    return sweep


def _yaml(text: str, path: Path):
    try:
        import yaml
    except ImportError:
        raise UsageError("--sweep needs PyYAML: pip install 'heartsound[train]'") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UsageError(f"sweep file {path}: not valid YAML{at} ({problem})") from None


def _no_unknown(data: Mapping, known, where: str, what: str) -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        raise UsageError(f"{where}: unknown {what} {unknown[0]!r}; known: {', '.join(known)}")


def _top_int(data: Mapping, key: str, default: int, where: str, low: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{where}: {key}: {value!r} must be a whole number >= {low}")
    return value


# -------------------------------------------------------------------------- params


def _params(params, search: str, where: str) -> tuple[tuple[Axis, ...], tuple[Axis, ...]]:
    if not isinstance(params, dict) or not params:
        raise UsageError(f"{where}: params is missing or empty: nothing to sweep (list at "
                         "least one value, e.g. params: {arch: [cnn, crnn]})")
    known = ("arch", *TRAIN_PARAMS, "spec")
    _no_unknown(params, known, f"{where}: params", "training parameter")
    train = tuple(_train_axis(name, value, search, where) for name, value in params.items()
                  if name != "spec")
    spec_part = params.get("spec", {})
    if not isinstance(spec_part, dict):
        raise UsageError(f"{where}: params.spec must map FeatureSpec fields to values, got "
                         f"{type(spec_part).__name__}")
    spec = tuple(_spec_axis(name, value, where) for name, value in spec_part.items())
    return train, spec


def _axis(name: str, value, search: str, where: str) -> Axis:
    """Shape only (scalar, list or distribution); the values are checked by the caller."""
    label = f"{where}: params.{name}"
    if isinstance(value, list):
        if not value:
            raise UsageError(f"{label} is an empty list: empty grid; give at least one value")
        if any(isinstance(v, (list, dict)) for v in value):
            raise UsageError(f"{label}: list items must be plain values")
        return Axis(name, "list", tuple(value))
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
            raise UsageError(f"{label}: a mapping must be one of {{uniform|loguniform|randint: "
                             "[lo, hi]}}, or give a list of values")
        (kind, bounds), = value.items()
        if search != "random":
            raise UsageError(f"{label}: {kind} needs search: random; a grid takes a list")
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(_is_number(b) for b in bounds) or not bounds[0] < bounds[1]):
            raise UsageError(f"{label}: {kind} needs [lo, hi] with lo < hi, got {bounds!r}")
        if kind == "loguniform" and bounds[0] <= 0:
            raise UsageError(f"{label}: loguniform needs lo > 0, got {bounds[0]!r}")
        return Axis(name, kind, tuple(bounds))
    return Axis(name, "fixed", (value,))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _train_axis(name: str, value, search: str, where: str) -> Axis:
    axis = _axis(name, value, search, where)
    label = f"{where}: params.{name}"
    if name == "arch":
        if axis.kind in DISTRIBUTIONS:
            raise UsageError(f"{label}: list the architectures, e.g. [cnn, crnn]")
        choices = _architectures()
        for v in axis.values:
            if v not in choices:
                raise UsageError(f"{label}: unknown architecture {v!r}; choose from "
                                 f"{', '.join(choices)}")
        return axis
    param = TRAIN_PARAMS[name]
    if axis.kind == "randint" and param.kind is not int:
        raise UsageError(f"{label}: randint is for whole numbers; {name} takes "
                         "uniform or loguniform")
    if axis.kind in ("uniform", "loguniform") and param.kind is int:
        raise UsageError(f"{label}: {name} is a whole number: use randint or a list")
    for v in axis.values:
        _check_train_value(name, param, v, label)
    return axis


def _check_train_value(name: str, param: TrainParam, v, label: str) -> None:
    wanted = "a whole number" if param.kind is int else "a number"
    ok_type = (isinstance(v, int) if param.kind is int else _is_number(v))
    if isinstance(v, bool) or not ok_type:
        raise UsageError(f"{label}: {v!r} is not {wanted} ({param.help})")
    if not param.low <= v <= param.high:
        raise UsageError(f"{label}: {v!r} is outside {param.low:g}..{param.high:g} "
                         f"({param.help})")


def check_spec_field(name: str, label: str) -> None:
    """Refuse (UsageError, one line starting with ``label``) a name that is not a FeatureSpec
    field a training run may set: the sweep and ``heartsound train --spec`` share this."""
    names = [f.name for f in fields(FeatureSpec)]
    if name not in names:
        raise UsageError(f"{label}: FeatureSpec has no field {name!r}; a run may set: "
                         f"{', '.join(SWEEPABLE_SPEC_FIELDS)}")
    if name not in SWEEPABLE_SPEC_FIELDS:
        raise UsageError(f"{label}: the front end's {name} is fixed (fixed-point format, "
                         "contract or data rate); a run may set: "
                         f"{', '.join(SWEEPABLE_SPEC_FIELDS)}")


def _spec_axis(name: str, value, where: str) -> Axis:
    label = f"{where}: params.spec.{name}"
    check_spec_field(name, label)
    if isinstance(value, dict):
        raise UsageError(f"{label}: list the values (front-end numbers are not drawn from "
                         "ranges: every combination is checked before the sweep starts)")
    axis = _axis(f"spec.{name}", value, "grid", where)
    return Axis(name, axis.kind, axis.values)


def check_spec_combinations(spec: tuple[Axis, ...], where: str) -> int:
    """Build every FeatureSpec the sweep can produce; SpecError (one line) at the first bad
    one, naming its values. Returns how many were checked."""
    names = [a.name for a in spec]
    combos = itertools.islice(itertools.product(*(a.values for a in spec)), MAX_SPEC_CHECKS)
    count = 0
    for combo in combos:
        checked_feature_spec(dict(zip(names, combo, strict=True)), f"{where}: params.spec")
        count += 1
    return count


def feature_spec(values: Mapping[str, object]) -> FeatureSpec:
    """The default spec with ``values`` replaced, coerced and validated (SpecError if not)."""
    return FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), **dict(values)})


def checked_feature_spec(values: Mapping[str, object], where: str) -> FeatureSpec:
    """:func:`feature_spec`, its error (same class) prefixed with ``where`` and the values,
    so a person sees which of their numbers the front end refused."""
    try:
        return feature_spec(values)
    except HeartsoundError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise type(exc)(f"{where} {shown}: {exc}") from None
