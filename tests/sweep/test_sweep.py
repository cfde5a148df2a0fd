"""`heartsound train --sweep`: the sweep file's checks, the summary's ranking, and one real
sweep of two tiny trials with Ray Tune on the real recordings.

The real sweep runs the command inside a network namespace that this module creates
(``unshare -n``, loopback up, as root), as tests/batch/test_cluster.py does: there the local
Ray binds to 127.0.0.1 and nothing can reach beyond loopback. Both trials train a CNN
with different training seeds: the sweep must still give them the same patient-level
split (the split seed is the sweep's), which is what makes their ranking fair.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import DeviceError, SpecError, UsageError
from edge.spec import DEFAULT_SPEC
from tests.data_sources import SCREENING_SOURCES as SOURCES
from train.sweep.spec import SWEEP_HELP, load_sweep, parse_sweep
from train.sweep.summary import build_summary, render_table
from train.sweep.trial import TrialSetup, error_text, run_trial, trial_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sweep.yaml"

LIMIT = 10  # recordings per source: every source and class in every split, seconds to train
SWEEP_TIMEOUT_S = 400
UNREACHABLE_S = 10.0


def _error(text: str, exc=UsageError) -> str:
    with pytest.raises(exc) as info:
        parse_sweep(text, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ the sweep file


def test_example_file_is_a_valid_grid():
    sweep = load_sweep(EXAMPLE)
    assert sweep.search == "grid" and sweep.metric == "val_macc"
    assert sweep.n_trials == 8
    assert sweep.varying == ("arch", "seed", "spec.n_ceps")


def test_help_example_is_a_valid_sweep():
    body = "\n".join(line[2:] for line in SWEEP_HELP.splitlines()[1:])
    assert parse_sweep(body).n_trials == 2 * 2 * 2 * 2


def test_random_search_draws_num_samples():
    sweep = parse_sweep("search: random\nnum_samples: 5\nparams:\n  arch: [cnn, rnn]\n"
                        "  learning_rate: {loguniform: [0.0005, 0.005]}\n"
                        "  epochs: {randint: [2, 4]}\n  spec: {n_mels: [20, 26]}\n")
    assert sweep.n_trials == 5
    assert set(sweep.varying) == {"arch", "learning_rate", "epochs", "spec.n_mels"}


@pytest.mark.parametrize("text, names", [
    ("params: [", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("search: grid\n", "nothing to sweep"),
    ("params: {arch: []}\n", "empty grid"),
    ("params: {arch: [cnn, transformer]}\n", "'transformer'"),
    ("params: {arch: cnn, dropout: [0.1]}\n", "'dropout'"),
    ("params: {arch: cnn}\nworkers: 4\n", "'workers'"),
    ("params: {arch: cnn, spec: {n_bands: [20]}}\n", "n_bands"),
    ("params: {arch: cnn, spec: {window_q: [15, 30]}}\n", "window_q"),
    ("params: {arch: cnn, spec: {n_mels: {randint: [10, 30]}}}\n", "spec.n_mels"),
    ("params: {learning_rate: {uniform: [0.001, 0.01]}}\n", "search: random"),
    ("params: {epochs: [1, 0]}\n", "params.epochs"),
    ("params: {batch_size: [32.5]}\n", "params.batch_size"),
    ("search: grid\nnum_samples: 3\nparams: {arch: [cnn]}\n", "num_samples"),
    ("search: bayes\nparams: {arch: [cnn]}\n", "bayes"),
    ("metric: test_macc\nparams: {arch: [cnn]}\n", "test_macc"),
])
def test_bad_sweep_files_get_one_line_naming_the_key(text, names):
    assert names in _error(text)


def test_every_front_end_combination_is_validated_before_running():
    message = _error("params:\n  spec:\n    n_mels: [20, 12]\n    n_ceps: [13]\n",
                     SpecError)
    assert "n_mels=12" in message and "n_ceps" in message


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")


def test_trial_parameters_become_a_training_config_and_a_spec():
    config, spec = trial_config({"arch": "rnn", "seed": 3, "learning_rate": 0.01,
                                 "copies": 0, "spec": {"n_ceps": 10, "n_mels": 16}})
    assert (config.arch, config.seed, config.learning_rate) == ("rnn", 3, 0.01)
    assert config.augment.copies == 0 and config.workers == 1 and not config.progress
    assert (spec.n_ceps, spec.n_mels, spec.frame_length) == (10, 16, DEFAULT_SPEC.frame_length)


def test_error_text_is_one_line():
    assert error_text(ValueError("bad\nmore")) == "ValueError: bad"
    assert error_text(UsageError("refused")) == "refused"


def test_a_failing_trial_is_a_row_not_an_exception(tmp_path, data_root):
    """One cepstrum passes the spec's checks but no model takes a 1-wide input."""
    setup = TrialSetup(data=(str(data_root / "pascal"),), label_set="screening", limit=LIMIT,
                       split_seed=0, cache=None, trials_dir=str(tmp_path))
    row = run_trial({"arch": "cnn", "spec": {"n_ceps": 1}}, "t000-n_ceps1", setup)
    assert row["trial"] == "t000-n_ceps1" and "too small for cnn" in row["error"]
    assert "\n" not in row["error"] and "val_macc" not in row


# --------------------------------------------------------------------- the ranking


def _row(name: str, macc, split="s1", error=None) -> dict:
    return {"trial": name, "val_macc": macc, "val_auc": 0.5, "split_id": split,
            "error": error, "run_dir": f"/out/trials/{name}", "params": {"arch": "cnn"},
            "best_epoch": 1, "epochs_run": 1, "seconds": 3.0}


def test_summary_ranks_by_metric_and_keeps_failures_unranked():
    sweep = parse_sweep("params: {arch: [cnn, rnn, crnn]}\n")
    rows = [_row("t000", 0.6), _row("t001", None, error="boom"), _row("t002", 0.8),
            _row("t003", 0.9, split="other")]
    summary = build_summary(sweep, rows, "s1", Path("/out"), 10.0, "local")
    trials = summary["trials"]
    assert [t["trial"] for t in trials] == ["t002", "t000", "t001", "t003"]
    assert [t["rank"] for t in trials] == [1, 2, None, None]
    assert "differs from the sweep's" in trials[3]["error"]
    table = render_table(summary)
    assert "error: boom" in table and "trials/t002" in table


# ------------------------------------------------------------- refusals by the CLI


@pytest.fixture()
def tiny_sweep(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("params:\n  arch: cnn\n  seed: [0, 1]\n  epochs: 1\n  copies: 0\n")
    return path


def _data_args(data_root: Path) -> list[str]:
    return ["--data", str(data_root / "pascal"), "--data", str(data_root / "physionet2016")]


def test_existing_out_folder_is_refused_without_force(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["train", "--sweep", str(tiny_sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--force" in err and "\n" not in err
    assert main(["train", "--sweep", str(tiny_sweep), "--out", str(out), "--force"]) == 2
    assert "holds no heartsound sweep" in capsys.readouterr().err
    assert (out / "keep.txt").is_file()


def test_bad_yaml_through_the_command(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {arch: [cnn, lstm]}\n")
    assert main(["train", "--sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'lstm'" in err and "\n" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--epochs", "3"], ["--arch", "rnn"], ["--lodo"]])
def test_single_run_options_are_refused_next_to_a_sweep(tiny_sweep, tmp_path, capsys,
                                                          option):
    out = tmp_path / "o"
    assert main(["train", "--sweep", str(tiny_sweep), "--out", str(out), *option]) == 2
    assert option[0] in capsys.readouterr().err and not out.exists()


def test_ray_without_sweep_is_refused(capsys):
    assert main(["train", "--ray", "127.0.0.1:6379"]) == 2
    assert "--sweep" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_ray_address_is_one_line(tiny_sweep, tmp_path, data_root, capsys):
    pytest.importorskip("ray.tune", reason="Ray Tune is not installed")
    out = tmp_path / "out"
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    code = main(["train", "--sweep", str(tiny_sweep), "--out", str(out), "--ray", address,
                 "--limit", str(LIMIT), "--cache", str(tmp_path / "cache"),
                 *_data_args(data_root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == DeviceError.exit_code
    assert "unreachable" in err[-1] and address in err[-1]
    assert time.monotonic() - start < UNREACHABLE_S + 20  # data loading included
    assert not out.exists()


# ------------------------------------------------------------------ the real sweep


def _needs_namespace() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("the sweep test needs root with unshare (util-linux) to run Ray in its "
                    "own network namespace", pytrace=False)


def _processes_in(netns: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns/net").st_ino == netns:
                    found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def real_sweep(data_root, tmp_path_factory):
    """Two CNN trials (seeds 0 and 1), one epoch, no augmentation, on LIMIT recordings
    per source, run by the command inside a loopback-only network namespace."""
    _needs_namespace()
    pytest.importorskip("ray.tune", reason="Ray Tune is not installed")
    base = tmp_path_factory.mktemp("sweep")
    sweep = base / "tiny.yaml"
    sweep.write_text("params:\n  arch: cnn\n  seed: [0, 1]\n  epochs: 1\n  copies: 0\n")
    out, cache = base / "out", base / "cache"
    ray_tmp = Path(tempfile.mkdtemp(prefix="hsswp", dir="/tmp"))  # short socket paths
    command = [sys.executable, "-m", "edge.cli", "train", "--sweep", str(sweep), "--out",
               str(out), "--cache", str(cache), "--limit", str(LIMIT), "--quiet",
               *_data_args(data_root)]
    script = 'ip link set lo up && exec "$@"'
    home = base / "home"  # Ray must leave nothing in the user's home (no ~/.ray/auth_token)
    home.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO), "HOME": str(home)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    start = time.monotonic()
    proc = subprocess.Popen(["unshare", "-n", "bash", "-c", script, "sweep", *command],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    netns = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
    try:
        stdout, stderr = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        for pid in _processes_in(netns):  # anything Ray left behind in our namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, stderr[-2000:]
    assert not (home / ".ray").exists()
    return out, cache, stdout, seconds


@pytest.mark.slow
def test_both_trials_are_ordinary_run_folders(real_sweep):
    out, _, _, _ = real_sweep
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    for trial in summary["trials"]:
        folder = Path(trial["run_dir"])
        assert folder.parent == out / "trials"
        for name in ("model.keras", "metrics.json", "model.json", "spec.json", "splits.json"):
            assert (folder / name).is_file(), f"{folder}/{name}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["config"]["seed"] == trial["params"]["seed"]
        assert set(metrics["data"]["counts"]["test"]) == set(SOURCES)
    assert (out / "sweep_summary.csv").read_text().count("\n") == 3


@pytest.mark.slow
def test_trials_share_one_split_whatever_their_seed(real_sweep):
    out, _, stdout, _ = real_sweep
    summary = json.loads((out / "sweep_summary.json").read_text())
    ids = set()
    for trial in summary["trials"]:
        metrics = json.loads((Path(trial["run_dir"]) / "metrics.json").read_text())
        ids.add(metrics["data"]["split_id"])
        splits = json.loads((Path(trial["run_dir"]) / "splits.json").read_text())
        assert splits["split_id"] == metrics["data"]["split_id"]
    assert ids == {summary["split_id"]}
    assert {t["params"]["seed"] for t in summary["trials"]} == {0, 1}
    assert summary["split_id"][:12] in stdout


@pytest.mark.slow
def test_ranking_follows_validation_macc_of_the_run_folders(real_sweep):
    out, _, stdout, _ = real_sweep
    summary = json.loads((out / "sweep_summary.json").read_text())
    maccs = []
    for trial in summary["trials"]:
        metrics = json.loads((Path(trial["run_dir"]) / "metrics.json").read_text())
        maccs.append(metrics["validation"]["recording"]["overall"]["macc"])
        assert trial["val_macc"] == maccs[-1]
    assert [t["rank"] for t in summary["trials"]] == [1, 2]
    assert maccs == sorted(maccs, reverse=True)
    table = stdout[stdout.index("rank"):]
    assert table.index(summary["trials"][0]["trial"]) < table.index(
        summary["trials"][1]["trial"])


@pytest.mark.slow
def test_trials_shared_one_feature_cache(real_sweep):
    _, cache, _, seconds = real_sweep
    folders = list(cache.glob("spec-*"))
    assert len(folders) == 1  # one spec, one cache folder for both trials
    assert not list(folders[0].rglob("*.tmp"))  # atomic writes leave no partial files
    files = list(folders[0].rglob("*.npy"))
    assert files and all(np.load(f).dtype == np.int16 for f in files[:20])
    print(f"tiny sweep: {seconds:.0f} s")
