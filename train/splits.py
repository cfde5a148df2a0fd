"""Deterministic, stratified train/val/test splits that never cut a group in two.

Recordings of one patient (or one PASCAL set A sitting) are strongly alike, so a model
evaluated on a patient it trained on looks better than it is. Every split here keeps
each :attr:`Recording.group` whole, and is made *per source*: each database appears in
every split, so a metric per database exists on validation and test alike.

Stratification uses one label per group. A group whose recordings disagree (PASCAL
set B patients with an ``extrastole`` recording and ``normal`` ones) is stratified by
its *most informative* label: any label other than ``normal`` beats ``normal`` (the
screening view: a patient with one abnormal recording is an abnormal patient), and
among several abnormal labels the one rarest in that source wins, so rare conditions
are spread over the splits first. Groups with no usable label (unlabelled, or excluded
by the label set) form their own stratum and are split too, so the unlabelled files of
a test patient land in test, never in train.

All records are assigned, including those a label set excludes; call
``label_set.select(splits["train"])`` to get the ones a model trains on.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence

from edge.errors import DataError, UsageError
from train.datasets import LabelSet, Recording, get_label_set

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_VAL_FRACTION = 0.15
NORMAL = "normal"
UNLABELLED_STRATUM = ""
FRACTION_TOLERANCE = 1e-6
MAX_ATTEMPTS = 32  # placement orders tried before a split is declared impossible

Splits = dict[str, list[Recording]]
TargetFn = Callable[[Recording], str | None]


def split_groups(
    records: Sequence[Recording],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    label_set: str | LabelSet | None = None,
) -> Splits:
    """Split into train/val/test by group, stratified by label, per source.

    ``fractions`` are shares of recordings (not groups) for train, val and test. With
    ``label_set`` the strata and the class check use its classes; without one, the fine
    labels. Raises DataError when a split would lack a class or a source.
    """
    shares = _check_fractions(fractions)
    target, classes = _targets(records, label_set)
    needed = dict.fromkeys(SPLITS, classes)
    return _split_pool(records, shares, seed, target, needed, {})


def leave_one_database_out(
    records: Sequence[Recording],
    held_out: str = "physionet-a",
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    label_set: str | LabelSet | None = None,
) -> Splits:
    """Test on one whole database; train and validate (split by group) on the others.

    This is the honest estimate for PhysioNet, whose public files name no patients: a
    new database brings new patients, a new site and a new stethoscope.
    """
    sources = sorted({r.source for r in records})
    if held_out not in sources:
        raise DataError(f"cannot hold out '{held_out}': the data has sources {', '.join(sources)}")
    if len(sources) < 2:
        raise DataError(f"cannot hold out '{held_out}': it is the only source loaded")
    shares = _check_fractions((1.0 - val_fraction, val_fraction, 0.0))
    rest = [r for r in records if r.source != held_out]
    test = [r for r in records if r.source == held_out]
    target, rest_classes = _targets(rest, label_set)
    test_classes = _targets(test, label_set)[1]
    needed = {"train": rest_classes, "val": rest_classes, "test": test_classes}
    return _split_pool(rest, shares, seed, target, needed, {"test": test})


def group_folds(
    records: Sequence[Recording],
    k: int = 5,
    seed: int = 0,
    *,
    label_set: str | LabelSet | None = None,
) -> list[list[Recording]]:
    """``k`` cross-validation folds by group (patient, child, sitting), stratified by label
    per source as :func:`split_groups` is: each group lies in exactly one fold, so a
    child recorded under two ids (CirCor) is never tested on a fold that trained on it."""
    if k < 2:
        raise UsageError(f"cross-validation needs at least 2 folds, not {k}")
    groups = len({r.group for r in records})
    if groups < k:
        raise DataError(f"{groups} group(s) cannot fill {k} folds: use fewer folds")
    target, _ = _targets(records, label_set)
    placed = _placement(records, (1.0 / k,) * k, seed, target)
    fold_of = {g: i for i, groups in placed.items() for g in groups}
    folds: list[list[Recording]] = [[] for _ in range(k)]
    for record in records:
        folds[fold_of[record.group]].append(record)
    return folds


def split_id(splits: Mapping[str, Sequence[Recording]]) -> str:
    """sha256 of the sorted recording names of each split: the same split, the same id.

    Names are ``source/file`` so the id does not depend on where the data lives.
    """
    digest = hashlib.sha256()
    for split in sorted(splits):
        digest.update(f"[{split}]\n".encode())
        for name in sorted(r.name for r in splits[split]):
            digest.update(f"{name}\n".encode())
    return digest.hexdigest()


def group_stratum(labels: Sequence[str | None], rarity: Mapping[str, int]) -> str:
    """The one label a group is stratified by (see the module docstring for why).

    ``rarity`` counts recordings per label in the group's source; fewer is rarer.
    """
    present = {lab for lab in labels if lab is not None}
    if not present:
        return UNLABELLED_STRATUM
    abnormal = present - {NORMAL}
    if not abnormal:
        return NORMAL
    return min(abnormal, key=lambda lab: (rarity.get(lab, 0), lab))


# -------------------------------------------------------------------------- internals


def _split_pool(
    pool: Sequence[Recording],
    shares: tuple[float, float, float],
    seed: int,
    target: TargetFn,
    needed: Mapping[str, Sequence[str]],
    fixed: Splits,
) -> Splits:
    """Place ``pool`` by group (``fixed`` splits are given whole) and check classes.

    The greedy placement can corner itself when a source has few groups; another
    seeded randomised order (up to MAX_ATTEMPTS) usually finds a split that gives
    every split every class. Only when none does is the first problem reported.
    """
    required = {
        name: needed[name] if name in fixed or share > 0 else ()
        for name, share in zip(SPLITS, shares, strict=True)
    }
    _check_source_sizes(pool, shares)
    problem = _hopeless(pool, fixed, required, target)
    if problem:
        raise DataError(problem)
    for attempt in range(MAX_ATTEMPTS):
        splits = _collect(pool, _assign(pool, shares, seed, target, attempt))
        splits.update(fixed)
        missing = _missing_class(splits, required, target, [*pool, *_flatten(fixed)])
        if missing is None:
            return splits
        problem = problem or missing
    raise DataError(problem)


def _check_source_sizes(pool: Sequence[Recording], shares: Sequence[float]) -> None:
    """Each source must have a group for every split it is drawn into."""
    active = [name for name, share in zip(SPLITS, shares, strict=True) if share > 0]
    groups: dict[str, set[str]] = defaultdict(set)
    for record in pool:
        groups[record.source].add(record.group)
    for source, members in sorted(groups.items()):
        if len(members) < len(active):
            raise DataError(
                f"source {source} has {len(members)} group(s): too few to appear in each "
                f"of {', '.join(active)}; add data or use leave_one_database_out"
            )


def _hopeless(
    pool: Sequence[Recording],
    fixed: Splits,
    required: Mapping[str, Sequence[str]],
    target: TargetFn,
) -> str | None:
    """A class missing from a fixed split, or with fewer groups than splits needing it."""
    for name, part in fixed.items():
        missing = _missing_class({name: part}, {name: required[name]}, target, part)
        if missing:
            return missing
    drawn = [name for name in SPLITS if name not in fixed and required[name]]
    for cls in sorted({c for name in drawn for c in required[name]}):
        needing = [name for name in drawn if cls in required[name]]
        groups = len({r.group for r in pool if target(r) == cls})
        if groups < len(needing):
            return (
                f"the {needing[min(groups, len(needing) - 1)]} split has no '{cls}' "
                f"recordings ({groups} group(s) with '{cls}' in the data): add data, change "
                "the fractions or choose another label set"
            )
    return None


def _flatten(splits: Splits) -> list[Recording]:
    return [r for part in splits.values() for r in part]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions):
        raise UsageError(f"split fractions {tuple(fractions)}: need three shares >= 0")
    if abs(sum(fractions) - 1.0) > FRACTION_TOLERANCE or fractions[0] <= 0:
        raise UsageError(
            f"split fractions {tuple(fractions)}: they must add up to 1 with train > 0"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def _targets(
    records: Sequence[Recording], label_set: str | LabelSet | None
) -> tuple[TargetFn, tuple[str, ...]]:
    """The label each record is stratified by, and the classes a split of them needs.

    With a label set every split needs all its classes; without one, a split needs
    the fine labels present in the records it is drawn from.
    """
    if label_set is None:
        classes = tuple(sorted({r.label for r in records if r.label is not None}))
        return (lambda r: r.label), classes
    chosen = get_label_set(label_set)
    return chosen.target, chosen.classes


def _assign(
    records: Sequence[Recording],
    shares: tuple[float, float, float],
    seed: int,
    target: TargetFn,
    attempt: int = 0,
) -> dict[str, str]:
    """group -> split name; see :func:`_place` for the rule."""
    placed = _placement(records, shares, seed, target, attempt)
    return {g: SPLITS[i] for i, groups in placed.items() for g in groups}


def _placement(
    records: Sequence[Recording],
    shares: Sequence[float],
    seed: int,
    target: TargetFn,
    attempt: int = 0,
) -> dict[int, list[str]]:
    """Index of each share with a share > 0 -> its groups: the records grouped, each
    group given its stratum within its source, then placed by :func:`_place`."""
    by_group: dict[str, list[Recording]] = defaultdict(list)
    for record in records:
        by_group[record.group].append(record)
    source_of = _source_of_groups(by_group)
    active = [i for i, share in enumerate(shares) if share > 0]
    strata: dict[str, str] = {}
    for source in Counter(source_of.values()):
        groups = [g for g, s in source_of.items() if s == source]
        strata.update(_strata(groups, by_group, target))
    return _place(by_group, source_of, strata, shares, active, seed, attempt)


def _source_of_groups(by_group: Mapping[str, list[Recording]]) -> dict[str, str]:
    source_of = {}
    for group, members in by_group.items():
        sources = {r.source for r in members}
        if len(sources) > 1:
            raise DataError(f"group {group} spans sources {', '.join(sorted(sources))}")
        source_of[group] = members[0].source
    return source_of


def _strata(
    groups: Sequence[str], by_group: Mapping[str, list[Recording]], target: TargetFn
) -> dict[str, str]:
    rarity = Counter(t for g in groups for t in map(target, by_group[g]) if t is not None)
    return {g: group_stratum([target(r) for r in by_group[g]], rarity) for g in groups}


def _tiebreak(salt: str, group: str) -> str:
    """A per-group random key: the same for a group whatever other groups exist."""
    return hashlib.sha256(f"{salt}/{group}".encode()).hexdigest()


def _place(
    by_group: Mapping[str, list[Recording]],
    source_of: Mapping[str, str],
    strata: Mapping[str, str],
    shares: Sequence[float],
    active: Sequence[int],
    seed: int,
    attempt: int = 0,
) -> dict[int, list[str]]:
    """Greedy placement: each group to the split furthest below its share.

    Groups are taken rarest stratum first (fewest groups over all sources; unlabelled
    groups last, as no class depends on them), big groups first, ties broken by a
    seeded hash. Each goes to the split with the largest
    *relative* deficit (missing / target recordings) of its (source, stratum): relative
    rather than absolute so that a stratum of three small groups reaches all three
    splits. Ties go to a split that still lacks the stratum (a class must reach every
    split), then to one that lacks the source. When a source has only as many groups
    left as splits without it, they must go to those splits.

    ``attempt`` > 0 (a retry after a split lacked a class) shuffles the labelled
    groups and breaks score ties at random instead: a seeded randomised restart.
    """
    salt = f"{seed}/{attempt}"
    size = {g: len(members) for g, members in by_group.items()}
    total: Counter = Counter()  # (source, stratum) -> recordings
    for g in by_group:
        total[source_of[g], strata[g]] += size[g]
    groups_per_stratum = Counter(strata.values())
    if attempt == 0:
        order = sorted(
            by_group,
            key=lambda g: (
                strata[g] == UNLABELLED_STRATUM,
                groups_per_stratum[strata[g]],
                strata[g],
                -size[g],
                _tiebreak(salt, g),
            ),
        )
    else:
        order = sorted(
            by_group, key=lambda g: (strata[g] == UNLABELLED_STRATUM, _tiebreak(salt, g))
        )
    left = Counter(source_of.values())  # groups of each source not yet placed
    placed: dict[int, list[str]] = {i: [] for i in active}
    filled: Counter = Counter()  # (split, source, stratum) -> recordings
    has_stratum: Counter = Counter()  # (split, stratum) -> groups
    has_source: Counter = Counter()  # (split, source) -> groups
    for group in order:
        source, stratum = source_of[group], strata[group]
        without = [i for i in active if not has_source[i, source]]
        candidates = without if left[source] <= len(without) else list(active)

        def score(i: int, source: str = source, stratum: str = stratum, group: str = group):
            goal = shares[i] * total[source, stratum]
            deficit = round((goal - filled[i, source, stratum]) / goal, 9)
            tie = -i if attempt == 0 else _tiebreak(f"{salt}/{i}", group)
            return deficit, not has_stratum[i, stratum], not has_source[i, source], tie

        best = max(candidates, key=score)
        placed[best].append(group)
        filled[best, source, stratum] += size[group]
        has_stratum[best, stratum] += 1
        has_source[best, source] += 1
        left[source] -= 1
    return placed


def _collect(records: Sequence[Recording], assignment: Mapping[str, str]) -> Splits:
    splits: Splits = {name: [] for name in SPLITS}
    for record in records:
        splits[assignment[record.group]].append(record)
    return splits


def _missing_class(
    splits: Splits,
    needed: Mapping[str, Sequence[str]],
    target: TargetFn,
    records: Sequence[Recording],
) -> str | None:
    """The first class a split needs but lacks, as a message; None when all is well."""
    for name in splits:
        present = {target(r) for r in splits[name]}
        for cls in needed[name]:
            if cls not in present:
                groups = len({r.group for r in records if target(r) == cls})
                return (
                    f"the {name} split has no '{cls}' recordings ({groups} group(s) with "
                    f"'{cls}' in the data): add data, change the fractions or choose "
                    "another label set"
                )
    return None
