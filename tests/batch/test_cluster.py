"""Batch screening on a real Ray cluster: `heartsound screen --ray HOST:PORT`.

A Ray head and one worker node (``ray start``, one CPU each) run inside a network
namespace that this module creates (``unshare -n``, loopback up, as root): there Ray
binds to 127.0.0.1, while outside it Ray would use the machine's network address. Every
client runs inside the same namespace (``nsenter --net``), so nothing here ever talks to
anything but loopback. One cluster per session: starting Ray takes seconds.

The reference is the single-process command on the same recordings: the rows must be
the same bits.
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
import threading
import time
from pathlib import Path

import pytest

from tests.batch.test_pool import BAD_CODE, by_file, kill_drill
from tests.mfcc_recordings import pick

pytest.importorskip("ray", reason="the 'cluster' extra (Ray) is not installed")

REPO = Path(__file__).resolve().parents[2]
PORT = 6379  # free: the namespace is new
SOURCES = ("pascal/set_a", "pascal/set_b", "physionet2016/training-a",
           "physionet2016/training-b", "physionet2016/training-d", "physionet2016/training-e")
PER_SOURCE = 4
START_TIMEOUT_S = 90
UNREACHABLE_S = 10.0  # an unreachable address must fail in well under ray.init's minutes
RAY_STARTED = "Ray runtime started"
CLUSTER_SCRIPT = f"""
set -e
ip link set lo up
cd "$HS_TMP"
"$HS_PY" -m ray.scripts.scripts start --head --block --node-ip-address=127.0.0.1 \
    --port={PORT} --num-cpus=1 --include-dashboard=false --disable-usage-stats \
    --temp-dir="$HS_TMP/ray" --object-store-memory=100000000 > head.log 2>&1 &
echo $! > head.pid
until grep -q "{RAY_STARTED}" head.log; do sleep 0.2; done
"$HS_PY" -m ray.scripts.scripts start --block --address=127.0.0.1:{PORT} \
    --node-ip-address=127.0.0.1 --num-cpus=1 --object-store-memory=100000000 \
    --dashboard-agent-listen-port=52366 > worker.log 2>&1 &
echo $! > worker.pid
wait
"""


def _env(home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTSOUND_HOME": str(home),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("HEARTSOUND_MODEL", None)
    env.pop("RAY_ADDRESS", None)
    return env


class Cluster:
    """A two-node Ray cluster in its own network namespace, and a way to run in it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ready = False  # started now, waited for at first use: the reference runs meanwhile
        self.tmp = Path(tempfile.mkdtemp(prefix="hsray", dir="/tmp"))  # short socket paths
        env = {**_env(home), "HS_TMP": str(self.tmp), "HS_PY": sys.executable}
        self.shell = subprocess.Popen(["unshare", "-n", "bash", "-c", CLUSTER_SCRIPT], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.netns = os.stat(f"/proc/{self.shell.pid}/ns/net").st_ino
        if self.netns == os.stat("/proc/self/ns/net").st_ino:
            time.sleep(0.5)  # unshare has not switched yet
            self.netns = os.stat(f"/proc/{self.shell.pid}/ns/net").st_ino

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(RAY_STARTED in _text(self.tmp / f"{n}.log") for n in ("head", "worker")):
                return
            if self.shell.poll() is not None:
                break
            time.sleep(0.2)
        logs = " | ".join(_text(self.tmp / f"{n}.log")[-400:] for n in ("head", "worker"))
        pytest.fail(f"Ray cluster did not start in its namespace: {logs}", pytrace=False)

    def command(self, *args: str, action: str = "screen") -> list[str]:
        """A `heartsound ACTION` command line that runs inside the namespace."""
        if not self.ready:
            self.wait_ready()
            self.ready = True
        return ["nsenter", f"--net=/proc/{self.shell.pid}/ns/net", "--", sys.executable,
                "-m", "edge.cli", action, *args]

    def run(self, *args: str, action: str = "screen",
            timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args, action=action), capture_output=True,
                              text=True, cwd=REPO, env=_env(self.home), timeout=timeout)

    def stop(self) -> None:
        """End the `ray start --block` processes (they stop their nodes), then anything
        still in our namespace, each by its pid."""
        for name in ("worker", "head"):
            pid = _text(self.tmp / f"{name}.pid").strip()
            if pid:
                _signal(int(pid), signal.SIGTERM)
        try:
            self.shell.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.shell.kill()
        for pid in self.processes():
            _signal(pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def busy_actor(self) -> int:
        """The pid of a ScreenActor process while it runs a `screen` call."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = self.processes(b"ray::ScreenActor.screen")
            if busy:
                return busy[0]
            time.sleep(0.01)
        pytest.fail("no Ray actor was screening within 120 s", pytrace=False)

    def processes(self, cmdline_prefix: bytes = b"") -> list[int]:
        """Pids of the processes in our namespace (all started by this module)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                inside = os.stat(entry / "ns/net").st_ino == self.netns
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if inside and cmdline.startswith(cmdline_prefix):
                found.append(int(entry.name))
        return found


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.fail("the Ray tests need root with unshare and nsenter (util-linux) to put "
                    "the cluster in its own network namespace", pytrace=False)
    c = Cluster(tmp_path_factory.mktemp("rayhome"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def recordings(data_root, tmp_path_factory) -> list[str]:
    """4 real recordings per source, then an empty file and a truncated WAV."""
    files = [str(p) for folder in SOURCES for p in pick(data_root, folder, PER_SOURCE)]
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty.wav").write_bytes(b"")
    data = Path(files[0]).read_bytes()
    (bad / "truncated.wav").write_bytes(data[: len(data) // 2])
    return [*files, str(bad / "empty.wav"), str(bad / "truncated.wav")]


@pytest.fixture(scope="module")
def single(recordings, tmp_path_factory) -> dict[str, dict]:
    """The single-process batch run on this machine (its bits equal screening alone,
    tests/batch/test_pool.py shows that)."""
    home = tmp_path_factory.mktemp("home")
    done = subprocess.run([sys.executable, "-m", "edge.cli", "screen", *recordings, "--json",
                           "--no-log", "--workers", "1"], capture_output=True, text=True,
                          cwd=REPO, env=_env(home), timeout=180)
    assert done.returncode == BAD_CODE, done.stderr
    return by_file([json.loads(line) for line in done.stdout.splitlines()])


@pytest.mark.slow
def test_ray_cluster_gives_the_single_process_bits(cluster, recordings, single):
    done = cluster.run(*recordings, "--ray", f"127.0.0.1:{PORT}", "--workers", "2", "--json",
                       "--no-log")
    assert done.returncode == BAD_CODE, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert by_file(rows) == single
    assert sum("error" in r for r in rows) == 2 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_killed_actor_loses_no_result(cluster, recordings, single):
    """Kill an actor's process mid-job: its recordings go to the other actors and every
    row arrives once, with the single-process bits."""
    command = cluster.command(*recordings, "--ray", f"127.0.0.1:{PORT}", "--workers", "2",
                              "--json", "--no-log")
    rows, code, stderr = kill_drill(command, _env(cluster.home),
                                    lambda _: cluster.busy_actor(), len(single))
    assert code == BAD_CODE, stderr
    assert by_file(rows) == single
    assert "a Ray actor died" in stderr


@pytest.mark.slow
def test_unreachable_ray_address_is_one_line_exit_7_quickly(cluster, recordings):
    start = time.monotonic()
    done = cluster.run(recordings[0], "--ray", "127.0.0.1:1", "--json", "--no-log")
    assert time.monotonic() - start < UNREACHABLE_S
    assert done.returncode == 7 and not done.stdout
    assert done.stderr.count("\n") == 1 and "127.0.0.1:1 is unreachable" in done.stderr


def test_a_port_that_is_not_ray_is_one_line_exit_7(recordings, tmp_path):
    """Something listens but is no Ray head: ray.init would retry for minutes."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        threading.Thread(target=lambda: _answer_http(server), daemon=True).start()
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "edge.cli", "screen", recordings[0],
                               "--ray", f"127.0.0.1:{port}", "--no-log"], capture_output=True,
                              text=True, cwd=REPO, env=_env(tmp_path), timeout=60)
    assert time.monotonic() - start < UNREACHABLE_S
    assert done.returncode == 7 and done.stderr.count("\n") == 1
    assert "not a Ray head" in done.stderr


def _answer_http(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.slow
def test_training_sweep_runs_its_trials_on_the_cluster(cluster, data_root, tmp_path):
    """`heartsound train --sweep --ray`: two one-epoch trials placed by Ray Tune on the
    two-node cluster, both ordinary run folders on one patient-level split."""
    pytest.importorskip("ray.tune", reason="Ray Tune is not installed")
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("params:\n  arch: cnn\n  seed: [0, 1]\n  epochs: 1\n  copies: 0\n")
    out = tmp_path / "out"
    data = [a for d in ("pascal", "physionet2016") for a in ("--data", str(data_root / d))]
    done = cluster.run("--sweep", str(sweep), "--out", str(out), "--cache",
                       str(tmp_path / "cache"), "--limit", "10", "--quiet",
                       "--ray", f"127.0.0.1:{PORT}", *data, action="train", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    splits = {json.loads((Path(t["run_dir"]) / "metrics.json").read_text())["data"]["split_id"]
              for t in summary["trials"]}
    assert len(splits) == 1
