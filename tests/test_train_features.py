"""Training features: the device's front end on real recordings, cached, augmented."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import train.features as features
from edge.audio import read_wav
from edge.mfcc import fill_window, mfcc, windows
from edge.spec import DEFAULT_SPEC
from tests.data_sources import DATA_FOLDERS, SOURCES
from train.augment import AugmentConfig, draw_variants, noise_bank, speed_rates
from train.datasets import SCREENING, load_records
from train.features import (
    IDENTITY,
    FeatureCache,
    Variant,
    extract_all,
    recording_windows,
)


@pytest.fixture(scope="module")
def records(data_root):
    return load_records([data_root / name for name in DATA_FOLDERS])


@pytest.fixture(scope="module")
def one_per_source(records):
    """The shortest labelled recording of each source (fast, and covers every rate)."""
    out = []
    for source in SOURCES:
        labelled = [r for r in records if r.source == source and r.label not in (None,)]
        out.append(min(labelled, key=lambda r: (r.seconds, r.name)))
    return out


def _counting(monkeypatch):
    calls = []
    real = features.compute_features

    def counted(path, spec, variant=IDENTITY):
        calls.append((str(path), variant.key()))
        return real(path, spec, variant)

    monkeypatch.setattr(features, "compute_features", counted)
    return calls


def test_features_are_the_front_end_and_second_run_hits_the_cache(
        tmp_path, monkeypatch, one_per_source):
    calls = _counting(monkeypatch)
    cache = FeatureCache(tmp_path, DEFAULT_SPEC)
    items = [(r.path, IDENTITY) for r in one_per_source]
    first, stats1 = extract_all(items, DEFAULT_SPEC, cache, workers=1, progress=False)
    assert stats1.computed == len(items) and len(calls) == len(items)
    second, stats2 = extract_all(items, DEFAULT_SPEC, cache, workers=1, progress=False)
    assert stats2.computed == 0 and stats2.cached == len(items)
    assert len(calls) == len(items)  # nothing recomputed
    for rec, a, b in zip(one_per_source, first, second, strict=True):
        assert a.dtype == np.int16 and np.array_equal(a, b)
        pcm = fill_window(read_wav(rec.path, DEFAULT_SPEC.sample_rate_hz), DEFAULT_SPEC)
        assert np.array_equal(a, mfcc(pcm, DEFAULT_SPEC))  # the device's own bits


def test_cache_key_follows_spec_and_variant(tmp_path, monkeypatch, one_per_source):
    calls = _counting(monkeypatch)
    rec = one_per_source[3]
    extract_all([(rec.path, IDENTITY)], DEFAULT_SPEC, FeatureCache(tmp_path, DEFAULT_SPEC),
                workers=1, progress=False)
    other_spec = replace(DEFAULT_SPEC, n_ceps=12)
    extract_all([(rec.path, IDENTITY)], other_spec, FeatureCache(tmp_path, other_spec),
                workers=1, progress=False)
    louder = Variant(gain_db=3.0)
    extract_all([(rec.path, louder)], DEFAULT_SPEC, FeatureCache(tmp_path, DEFAULT_SPEC),
                workers=1, progress=False)
    assert len(calls) == 3
    assert len(list(tmp_path.glob("spec-*"))) == 2


def test_pool_gives_the_same_features(tmp_path, one_per_source):
    items = [(r.path, IDENTITY) for r in one_per_source]
    pooled, stats = extract_all(items, DEFAULT_SPEC, None, workers=2, progress=False)
    single, _ = extract_all(items, DEFAULT_SPEC, None, workers=1, progress=False)
    assert stats.computed == len(items)
    assert all(np.array_equal(a, b) for a, b in zip(pooled, single, strict=True))


def test_short_recordings_are_looped_to_one_window(one_per_source):
    pascal_b = one_per_source[1]
    assert pascal_b.seconds < DEFAULT_SPEC.window_s  # the shortest set B file is ~1 s
    feats = features.compute_features(pascal_b.path, DEFAULT_SPEC)
    wins = recording_windows(feats, DEFAULT_SPEC)
    assert wins.shape == (1, DEFAULT_SPEC.frames_per_window, DEFAULT_SPEC.n_ceps)


def test_time_shift_moves_the_window_start(one_per_source):
    feats = features.compute_features(one_per_source[2].path, DEFAULT_SPEC)  # PhysioNet a
    shifted = recording_windows(feats, DEFAULT_SPEC, offset=5)
    assert np.array_equal(shifted, windows(feats[5:], DEFAULT_SPEC))
    assert not np.array_equal(shifted[0], recording_windows(feats, DEFAULT_SPEC)[0])


def test_augmentation_is_reproducible_and_draws_noise_from_train_only(records):
    set_a = sorted((r for r in records if r.source == "pascal-a"), key=lambda r: r.name)
    train, held_out = set_a[::2], set_a[1::2]
    bank = noise_bank(train, SCREENING.target)
    assert bank and all(n.path in {r.path for r in train} for n in bank)
    assert not {n.path for n in bank} & {r.path for r in held_out}
    labelled = SCREENING.select(train)[:10]
    config = AugmentConfig(copies=2, noise_probability=1.0)
    a = draw_variants(labelled, SCREENING.target, bank, DEFAULT_SPEC, config, seed=1)
    b = draw_variants(labelled, SCREENING.target, bank, DEFAULT_SPEC, config, seed=1)
    c = draw_variants(labelled, SCREENING.target, bank, DEFAULT_SPEC, config, seed=2)
    assert a == b and a != c and len(a) == 20
    for record, variant in a:
        assert variant.speed_rate_hz in speed_rates(DEFAULT_SPEC, config.max_speed_change)
        source = next(n for n in bank if str(n.path) == variant.noise)
        assert source.target in (None, SCREENING.target(record))  # noisy: same class only


def test_speed_change_and_noise_alter_the_audio(one_per_source):
    rec = one_per_source[4]  # PhysioNet d
    noise = next(r for r in load_records([rec.path.parent]) if r is not rec)
    base = features.compute_features(rec.path, DEFAULT_SPEC)
    slow = features.compute_features(rec.path, DEFAULT_SPEC, Variant(speed_rate_hz=2100))
    noisy = features.compute_features(
        rec.path, DEFAULT_SPEC, Variant(noise=str(noise.path), noise_sha="x", snr_db=5.0))
    # 5 % slower: 5 % more frames of the same recording
    assert slow.shape[0] == pytest.approx(base.shape[0] * 1.05, abs=2)
    assert noisy.shape == base.shape and not np.array_equal(noisy, base)
