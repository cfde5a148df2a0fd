"""``heartsound train --sweep SWEEP_YAML [--ray ADDRESS]``: a training sweep end to end.

Order matters for the person at the keyboard: everything that can be refused is refused
before Ray starts (sweep file, output folder, data, the split), then Ray is joined (an
unreachable cluster fails in seconds, with one line, leaving no folder behind), then the
trials run and the summary is written even when some of them failed.

Local by default: Ray on this machine with one CPU per trial, bound to 127.0.0.1 (a
sweep on a laptop opens no port to the network). ``--ray`` joins a running cluster with
:func:`edge.batch.cluster.connect`, the same helper (and messages) as ``heartsound screen
--ray``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from edge.batch.cluster import RAY_AUTH_MODE_ENV, ray_token_given, send_saved_token
from edge.errors import UsageError
from train.sweep.spec import Sweep, load_sweep

DEFAULT_RUNS = Path("runs")
SWEEP_FILE = "sweep.json"
SWEEP_MARKERS = (SWEEP_FILE, "sweep_summary.json")
LOCAL_NODE_IP = "127.0.0.1"
CPUS_PER_TRIAL = 1
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_BYTES = 32  # as Ray's own generator: 256 bits
#: Options of a single run that a sweep file sets instead (refused next to --sweep).
SINGLE_RUN_OPTIONS = {"epochs": "--epochs", "min_se": "--min-se", "copies": "--copies",
                      "channel": "--channel"}


def run_sweep_command(args: argparse.Namespace) -> int:
    """The command; exit 0 if at least one trial trained, 1 if every trial failed."""
    start = time.perf_counter()
    sweep = load_sweep(args.sweep)
    _refuse_single_run_options(args)
    out = (args.out or DEFAULT_RUNS / f"sweep-{args.sweep.stem}").resolve()
    check_sweep_folder(out, args.force)
    setup, split = _setup_and_split(args, sweep, out)
    print(f"sweep {args.sweep}: {sweep.search} search, {sweep.n_trials} trials, split "
          f"{split[:12]} (split_seed {sweep.split_seed})", file=sys.stderr)
    cluster = _start_ray(args.ray)
    try:
        from train.sweep.tune import run_trials

        make_sweep_folder(out, args.force, sweep, setup, split, cluster)
        rows = run_trials(sweep, setup, out, progress=not args.quiet)
    finally:
        _stop_ray()
    return _finish(sweep, rows, split, out, time.perf_counter() - start, cluster)


def _refuse_single_run_options(args: argparse.Namespace) -> None:
    for attr, flag in SINGLE_RUN_OPTIONS.items():
        if getattr(args, attr, None) is not None:
            raise UsageError(f"{flag} is for a single run; with --sweep set it under params "
                             f"in {args.sweep}")
    from train.models import DEFAULT_ARCH

    if args.arch != DEFAULT_ARCH or args.seed != 0:
        flag = "--arch" if args.arch != DEFAULT_ARCH else "--seed"
        raise UsageError(f"{flag} is for a single run; with --sweep list it under params "
                         f"in {args.sweep}")
    if args.lodo or args.no_augment:
        flag = "--lodo" if args.lodo else "--no-augment"
        raise UsageError(f"{flag} is for a single run; with --sweep set "
                         + ("params.copies: 0" if args.no_augment else "a single run on the "
                            "best trial's settings afterwards") + f" in {args.sweep}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: need at least 1 recording per source")


# --------------------------------------------------------------------------- folder


def check_sweep_folder(out: Path, force: bool) -> None:
    """Refuse an existing folder unless --force, and never one that holds no sweep."""
    from train.pipeline import check_output_folder

    check_output_folder(out, force, SWEEP_MARKERS, "sweep")


def make_sweep_folder(out: Path, force: bool, sweep: Sweep, setup, split: str,
                      cluster: str) -> None:
    """A fresh folder with ``sweep.json`` (the checked sweep and what all trials share)."""
    check_sweep_folder(out, force)
    if out.exists():
        shutil.rmtree(out)
    (out / "trials").mkdir(parents=True)
    record = {"sweep": sweep.to_dict(), "sweep_file": str(sweep.path),
              "sweep_text": sweep.text, "split_id": split, "cluster": cluster,
              "setup": {"data": list(setup.data), "labels": setup.label_set,
                        "limit_per_source": setup.limit, "cache": setup.cache}}
    (out / SWEEP_FILE).write_text(json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- data


def _setup_and_split(args: argparse.Namespace, sweep: Sweep, out: Path):
    """What every trial shares, and the id of the split they must all report."""
    from train.datasets import default_data_paths, get_label_set, load_records
    from train.features import default_cache_dir
    from train.pipeline import select_and_split
    from train.splits import split_id
    from train.sweep.trial import TrialSetup

    label_set = get_label_set(args.labels)
    data = [Path(d).resolve() for d in (args.data or default_data_paths())]
    cache = None if args.no_cache else Path(args.cache or default_cache_dir()).resolve()
    _, splits = select_and_split(load_records(data), label_set, args.limit, sweep.split_seed)
    setup = TrialSetup(data=tuple(str(d) for d in data), label_set=label_set.name,
                       limit=args.limit, split_seed=sweep.split_seed,
                       cache=str(cache) if cache else None, trials_dir=str(out / "trials"),
                       threads=CPUS_PER_TRIAL)
    return setup, split_id(splits)


# ------------------------------------------------------------------------------ Ray


def _start_ray(address: str | None) -> str:
    """Join the cluster at ``address`` or start a local Ray; a description for the summary."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # trial processes inherit it locally
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-trial tables: our bar instead
    from train.sweep.tune import import_tune

    # before Ray is imported: its C++ side reads RAY_AUTH_MODE once, at import
    if address is not None:
        send_saved_token()
    else:
        _ephemeral_token()
    import_tune()  # a missing Ray Tune is reported before anything starts
    if address is not None:
        from edge.batch.cluster import connect

        ray = connect(address)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        return f"the Ray cluster at {address} ({cpus} CPUs)"
    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address=LOCAL_NODE_IP,
             logging_level=logging.WARNING, log_to_driver=False)
    return f"local Ray ({cpus} CPUs, {CPUS_PER_TRIAL} per trial)"


def _ephemeral_token() -> None:
    """Token authentication for the local Ray with a token that lives in this process's
    environment only. Why: left alone, ``ray.init()`` writes ``~/.ray/auth_token``, and
    from then on every ``ray start --head`` of this user requires it while clients that
    do not set RAY_AUTH_MODE fail to join ("Authentication token is missing")."""
    if os.environ.get(RAY_AUTH_MODE_ENV) is None and not ray_token_given():
        os.environ[RAY_AUTH_MODE_ENV] = "token"
        os.environ[RAY_TOKEN_ENV] = secrets.token_hex(TOKEN_BYTES)


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# -------------------------------------------------------------------------- summary


def _finish(sweep: Sweep, rows: list[dict], split: str, out: Path, seconds: float,
            cluster: str) -> int:
    from train.sweep.summary import build_summary, headline, render_table, write_summary

    summary = build_summary(sweep, rows, split, out, seconds, cluster)
    json_path, csv_path = write_summary(out, summary)
    print()
    print(headline(summary))
    print(render_table(summary))
    print(f"summary: {json_path} and {csv_path.name}")
    return 0 if summary["n_failed"] < summary["n_trials"] else 1
