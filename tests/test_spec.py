"""FeatureSpec: JSON round trip, derived numbers, and specs that cannot work."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge.errors import SpecError
from edge.spec import DEFAULT_SPEC, FeatureSpec


def test_default_spec_numbers_fit_a_microcontroller() -> None:
    spec = DEFAULT_SPEC
    assert spec.frames_per_window == 74
    assert spec.window_hop_frames == 25
    assert spec.n_fft_bins == 65
    assert spec.frames_per_window * spec.n_ceps <= 1300
    assert spec.f_max_hz <= spec.sample_rate_hz / 2


def test_json_round_trip_is_identical() -> None:
    text = DEFAULT_SPEC.to_json()
    again = FeatureSpec.from_json(text)
    assert again == DEFAULT_SPEC
    assert again.to_json() == text
    assert json.loads(text)["version"] == DEFAULT_SPEC.version


def test_spec_is_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SPEC.n_mels = 3  # type: ignore[misc]
    assert hash(DEFAULT_SPEC) == hash(FeatureSpec())


def test_every_field_has_a_docstring() -> None:
    import inspect

    source = inspect.getsource(FeatureSpec)
    for field in dataclasses.fields(FeatureSpec):
        head, _, tail = source.partition(f"    {field.name}: ")
        assert tail, field.name
        assert '"""' in tail.splitlines()[1], f"{field.name} has no docstring"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"n_fft": 64}, "shorter than the frame"),
        ({"n_fft": 96, "frame_length": 96}, "power of two"),
        ({"f_max_hz": 1200.0}, "above Nyquist"),
        ({"f_min_hz": 800.0}, "min < max"),
        ({"n_ceps": 21}, "n_ceps"),
        ({"hop_length": 129}, "hop_length"),
        ({"window_s": 0.05}, "shorter than one frame"),
        ({"window_hop_s": 0.5 + 1 / 2000}, "whole number of hops"),
        ({"n_mels": 40, "sample_rate_hz": 8000}, "hold no FFT bin"),
        ({"version": 99}, "contract version"),
        ({"preemph_q15": 40000}, "preemph_q15"),
        ({"normalise": "zscore"}, "normalise"),
        ({"out_frac_bits": 18}, "out_frac_bits"),
        ({"window": "hamming"}, "window"),
    ],
)
def test_impossible_specs_raise_spec_error(changes: dict, words: str) -> None:
    spec = dataclasses.replace(DEFAULT_SPEC, **changes)
    with pytest.raises(SpecError, match=words):
        spec.validate()
    with pytest.raises(SpecError):
        FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), **changes})


def test_bad_json_raises_spec_error_not_a_traceback() -> None:
    with pytest.raises(SpecError, match="not valid JSON"):
        FeatureSpec.from_json("{not json")
    with pytest.raises(SpecError, match="unknown field"):
        FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), "colour": "red"})
    with pytest.raises(SpecError, match="must be int"):
        FeatureSpec.from_dict({**DEFAULT_SPEC.to_dict(), "n_mels": "20"})
    with pytest.raises(SpecError, match="JSON object"):
        FeatureSpec.from_json("[1, 2]")


def test_other_valid_specs_validate() -> None:
    wide = FeatureSpec(sample_rate_hz=4000, frame_length=200, n_fft=256, hop_length=100,
                       f_max_hz=1500.0, n_mels=26, window_hop_s=0.5)
    assert wide.validate() is wide
    assert wide.frames_per_window == 1 + (12000 - 200) // 100
    assert wide.n_frames(199) == 0 and wide.n_frames(200) == 1
