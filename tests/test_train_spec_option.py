"""`heartsound train --spec KEY=VALUE`: one run on another front end, refused like a sweep's.

Every refusal goes through the real command (``edge.cli.main``) and must be one line, name
the item, exit non-zero and leave no run folder behind. One tiny real run (10 recordings
per source, one epoch, no augmentation: about 10 s) shows the spec reaches the features,
the model's input and the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import SpecError, UsageError
from edge.spec import DEFAULT_SPEC
from train.commands.train import spec_of_items

LIMIT = 10  # recordings per source: every source and class in every split, seconds to train


def _data_args(data_root: Path) -> list[str]:
    return ["--data", str(data_root / "pascal"), "--data", str(data_root / "physionet2016")]


@pytest.mark.parametrize("items, code, names", [
    (["hop_length"], UsageError.exit_code, ["'hop_length'", "KEY=VALUE"]),
    (["=40"], UsageError.exit_code, ["'=40'", "KEY=VALUE"]),
    (["hop_length="], UsageError.exit_code, ["'hop_length='", "KEY=VALUE"]),
    (["foo=1"], UsageError.exit_code, ["foo=1", "no field 'foo'", "hop_length"]),
    (["out_frac_bits=5"], UsageError.exit_code, ["out_frac_bits=5", "is fixed", "n_ceps"]),
    (["window_q=15"], UsageError.exit_code, ["window_q=15", "is fixed"]),
    (["sample_rate_hz=4000"], UsageError.exit_code, ["sample_rate_hz=4000", "is fixed"]),
    (["hop_length=abc"], UsageError.exit_code, ["hop_length=abc", "whole number",
                                                 "hop_length=80"]),
    (["hop_length=40.5"], UsageError.exit_code, ["hop_length=40.5", "whole number"]),
    (["f_min_hz=low"], UsageError.exit_code, ["f_min_hz=low", "a number"]),
    (["hop_length=40", "hop_length=20"], UsageError.exit_code, ["hop_length=20", "once"]),
    (["n_mels=12", "n_ceps=16"], SpecError.exit_code, ["n_mels=12", "n_ceps=16", "1..n_mels"]),
    (["hop_length=60"], SpecError.exit_code, ["hop_length=60", "window_hop_s"]),
    (["n_fft=100"], SpecError.exit_code, ["n_fft=100", "power of two"]),
    (["normalise=mean"], SpecError.exit_code,
     ["normalise=mean", "none, c0, cmn, rec_mean, rec_mvn"]),
])
def test_bad_items_are_one_line_naming_the_item(items, code, names, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet"]
    for item in items:
        args += ["--spec", item]
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("heartsound: --spec") and "\n" not in err, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    assert not out.exists()


def test_refused_before_the_data_is_looked_at(tmp_path, capsys):
    # A missing data folder would be a DataError (exit 5): the spec is refused first.
    code = main(["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"),
                 "--spec", "n_ceps=99"])
    assert code == SpecError.exit_code
    assert "n_ceps=99" in capsys.readouterr().err


def test_spec_next_to_a_sweep_is_refused(tmp_path, capsys):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("params:\n  arch: cnn\n  epochs: 1\n")
    out = tmp_path / "o"
    assert main(["train", "--sweep", str(sweep), "--out", str(out),
                 "--spec", "hop_length=40"]) == UsageError.exit_code
    err = capsys.readouterr().err.strip()
    assert "--spec" in err and "params.spec" in err and "\n" not in err
    assert not out.exists()


def test_values_take_the_type_the_spec_declares():
    spec = spec_of_items(["f_min_hz=30", "normalise=cmn", " n_mels = 24 "])
    assert spec.f_min_hz == 30.0 and isinstance(spec.f_min_hz, float)
    assert spec.normalise == "cmn" and spec.n_mels == 24
    assert spec.n_ceps == DEFAULT_SPEC.n_ceps and spec.hop_length == DEFAULT_SPEC.hop_length
    assert spec_of_items(None) is DEFAULT_SPEC and spec_of_items([]) is DEFAULT_SPEC


def test_help_names_the_keys_the_fixed_formats_and_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--spec KEY=VALUE", "hop_length", "n_ceps", "normalise", "out_frac_bits",
                  "cannot be changed", "--spec hop_length=40 --spec n_ceps=20"):
        assert words in text, words


@pytest.mark.slow
def test_a_tiny_run_trains_on_the_requested_front_end(data_root, tmp_path, capsys):
    from train.baseline import load_float_model

    out = tmp_path / "run"
    args = ["train", *_data_args(data_root), "--out", str(out), "--cache",
            str(tmp_path / "cache"), "--limit", str(LIMIT), "--epochs", "1", "--no-augment",
            "--quiet", "--spec", "hop_length=40", "--spec", "n_ceps=20"]
    assert main(args) == 0
    assert "front end: hop_length=40, n_ceps=20" in capsys.readouterr().out
    spec = json.loads((out / "spec.json").read_text())
    assert (spec["hop_length"], spec["n_ceps"]) == (40, 20)
    assert {k: v for k, v in spec.items() if k not in ("hop_length", "n_ceps")} == {
        k: v for k, v in DEFAULT_SPEC.to_dict().items() if k not in ("hop_length", "n_ceps")}
    assert json.loads((out / "metrics.json").read_text())["spec"] == spec
    frames = 1 + (DEFAULT_SPEC.window_samples - DEFAULT_SPEC.frame_length) // 40  # 147, not 74
    assert frames != DEFAULT_SPEC.frames_per_window
    model = load_float_model(out)
    assert tuple(model.input_shape[1:]) == (frames, 20)
    assert np.load(out / "representative.npy").shape[1:] == (frames, 20)


def test_default_run_folder_of_a_spec_run_differs_from_the_default_runs():
    from train.commands.train import _default_run_name
    from train.features import spec_hash

    assert _default_run_name("screening", "cnn", 0, DEFAULT_SPEC) == "screening-cnn-seed0"
    other = spec_of_items(["hop_length=40"])
    assert _default_run_name("screening", "cnn", 0, other) == (
        f"screening-cnn-seed0-spec{spec_hash(other)[:8]}")
    assert spec_hash(other) != spec_hash(DEFAULT_SPEC)
