"""Batch screening throughput: one and two local worker processes, and a local Ray cluster.

Screens the same real recordings (an even spread of every source: PASCAL A and B,
PhysioNet a, b, d) with

- edge.batch.pool.screen_local, workers=1 (this process, no pool: the baseline) and 2 (spawned
  pool; its start-up is part of the time),
- edge.batch.cluster.screen_ray with 1 and 2 actors on a two-node Ray cluster (one CPU per
  node) started here with `ray start` inside a network namespace (`unshare -n`, loopback
  only, needs root), where Ray binds to 127.0.0.1,

and prints a table: wall time, recordings per second, speed-up against one local worker,
start-up (call to first result; for Ray the connect is shown separately), and the
steady rate after the first result. Ray's overhead per recording is the steady time
per recording with N actors minus that of N local workers. Every run's rows must equal
the baseline's (latency and interpreter aside): the bench says so or fails.

Each configuration runs --repeat times, interleaved (local 1, local 2, Ray 1, Ray 2, then
again), and the fastest run counts: on a shared machine other jobs only ever slow a run
down. The load average before and after is printed: read the table with it.

    sudo python3 bench/bench_batch.py [--per-source 40] [--repeat 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.batch.pool import jobs_for, screen_local  # noqa: E402
from edge.screening import default_model_path  # noqa: E402

SOURCES = ("pascal/set_a", "pascal/set_b", "physionet2016/training-a",
           "physionet2016/training-b", "physionet2016/training-d")
INSIDE_ENV = "HS_BENCH_IN_NETNS"
PORT = 6379
RAY_STARTED = "Ray runtime started"
START_TIMEOUT_S = 90
VOLATILE = ("latency_ms", "interpreter")
OBJECT_STORE_BYTES = 100_000_000


def data_root() -> Path:
    """As tests/conftest.py: $HEARTSOUND_DATA's first entry's parent, else ../shared/data."""
    entries = [p for p in os.environ.get("HEARTSOUND_DATA", "").split(os.pathsep) if p.strip()]
    if entries:
        return Path(entries[0]).expanduser().resolve().parent
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def recordings(per_source: int) -> list[str]:
    """``per_source`` files spread evenly over each sorted source folder."""
    out = []
    for folder in SOURCES:
        files = sorted((data_root() / folder).glob("*.wav"))
        step = max(len(files) // per_source, 1)
        out += [str(p) for p in files[step // 2::step][:per_source]]
    return out


def timed(outcomes) -> dict:
    """Consume outcomes; wall time from the call, time of the first result, the rows."""
    start = time.perf_counter()
    first, rows = None, {}
    for outcome in outcomes:
        first = first or time.perf_counter()
        rows[outcome.name] = {k: v for k, v in outcome.row().items() if k not in VOLATILE}
    end = time.perf_counter()
    n = len(rows)
    return {"wall": end - start, "first": first - start,
            "steady": (end - first) / max(n - 1, 1), "rows": rows, "n": n}


# ----------------------------------------------------------------------------- Ray part


def start_cluster(tmp: Path) -> list[subprocess.Popen]:
    """Head and one worker node, one CPU each, `ray start --block` so that ending those
    two processes stops their nodes."""
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
              f"--object-store-memory={OBJECT_STORE_BYTES}"]
    head = [f"--port={PORT}", "--head", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={tmp}/ray"]
    worker = [f"--address=127.0.0.1:{PORT}", "--dashboard-agent-listen-port=52366"]
    return [_ray_start(tmp / "head.log", head + common),
            _ray_start(tmp / "worker.log", worker + common)][::-1]


def _ray_start(log: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    _wait_for(log)
    return proc


def _wait_for(log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while RAY_STARTED not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            sys.exit(f"bench_batch: Ray did not start: {log.read_text()[-500:]}")
        time.sleep(0.2)


def stop_cluster(nodes: list[subprocess.Popen]) -> None:
    """End our `ray start` processes, then whatever is left in our namespace, by pid."""
    for proc in nodes:
        proc.terminate()
    for proc in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    ours = os.stat("/proc/self/ns/net").st_ino
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns/net").st_ino == ours:
                    os.kill(int(entry.name), signal.SIGKILL)


def ray_run(files: list[str], actors: int) -> dict:
    from edge.batch.cluster import screen_ray

    start = time.perf_counter()
    outcomes = screen_ray(jobs_for(files, absolute=True), default_model_path(),
                          f"127.0.0.1:{PORT}", actors=actors, notify=_quiet)
    connect = time.perf_counter() - start
    run = timed(outcomes)
    run["connect"] = connect
    run["wall"] += connect
    return run


def local_run(files: list[str], workers: int) -> dict:
    return timed(screen_local(jobs_for(files), default_model_path(), workers=workers,
                              notify=_quiet))


def _quiet(message: str) -> None:
    pass


def measure(files: list[str], with_ray: bool, repeat: int) -> dict:
    """Fastest of ``repeat`` interleaved runs per configuration."""
    configs = [("local", 1), ("local", 2)] + ([("Ray", 1), ("Ray", 2)] if with_ray else [])
    best: dict = {}
    for _ in range(repeat):
        for engine, n in configs:
            run = (ray_run if engine == "Ray" else local_run)(files, n)
            if (engine, n) not in best or run["wall"] < best[(engine, n)]["wall"]:
                best[(engine, n)] = run
    return best


# ----------------------------------------------------------------------------- report


def report(results: dict) -> None:
    base = results[("local", 1)]
    print(f"\n{base['n']} recordings ({len(SOURCES)} sources), model "
          f"{default_model_path().name}, {os.cpu_count()} CPUs\n")
    print("| engine | workers | wall s | rec/s | speed-up vs 1 local | start-up s | "
          "steady rec/s | rows = baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for (engine, n), run in results.items():
        start = run["first"] + run.get("connect", 0.0)
        connect = f" (connect {run['connect']:.2f})" if "connect" in run else ""
        print(f"| {engine} | {n} | {run['wall']:.2f} | {run['n'] / run['wall']:.1f} | "
              f"{base['wall'] / run['wall']:.2f} | {start:.2f}{connect} | "
              f"{1 / run['steady']:.1f} | {'yes' if run['rows'] == base['rows'] else 'NO'} |")
    for n in (1, 2):
        if ("Ray", n) in results and ("local", n) in results:
            extra = (results[("Ray", n)]["steady"] - results[("local", n)]["steady"]) * 1000
            print(f"\nRay overhead with {n} actor(s): {extra:+.2f} ms per recording (steady, "
                  f"against {n} local worker(s)); fixed: connect "
                  f"{results[('Ray', n)]['connect']:.2f} s + first result "
                  f"{results[('Ray', n)]['first']:.2f} s")
    if any(run["rows"] != base["rows"] for run in results.values()):
        sys.exit("bench_batch: some engine's rows differ from the single-process rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=40,
                        help="recordings per source (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per configuration, the fastest counts (default %(default)s)")
    parser.add_argument("--no-ray", action="store_true", help="local workers only")
    args = parser.parse_args()
    want_ray = not args.no_ray
    if want_ray and os.environ.get(INSIDE_ENV) != "1":
        if os.geteuid() != 0:
            sys.exit("bench_batch: the Ray part needs root (unshare -n); or pass --no-ray")
        env = {**os.environ, INSIDE_ENV: "1"}
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, *sys.argv]
        sys.exit(subprocess.call(cmd, env=env))
    files = recordings(args.per_source)
    load_before = os.getloadavg()[0]
    if not want_ray:
        results = measure(files, False, args.repeat)
    else:
        with tempfile.TemporaryDirectory(prefix="hsbench", dir="/tmp") as tmp:
            nodes = start_cluster(Path(tmp))
            try:
                results = measure(files, True, args.repeat)
            finally:
                stop_cluster(nodes)
    report(results)
    print(f"\nload average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
