"""Screen many recordings at once on one machine, streaming one outcome per recording.

Why processes and not threads: the fixed-point front end is numpy code that holds the
GIL between small array operations, so threads barely overlap; separate processes do.
Each worker loads the model once (the pool's initializer) and then screens recording
after recording with the very :func:`screen_job` that the single-process path runs, so a
row is the same bits whichever worker produced it.

Why a recording's failure is an :class:`Outcome`, not an exception: an archive of tens
of thousands of files always holds a few broken ones; the job reports each as a row with
its error and exit code and goes on.

Why the pool is rebuilt when a worker dies: ``ProcessPoolExecutor`` marks itself broken
when any worker process disappears (killed by the OOM killer, by a person, or by a
crash in native code) and fails every unfinished future with ``BrokenProcessPool``. The
recordings that were unfinished are then screened again in a fresh pool, so no result
is lost and none is produced twice. A recording that was in flight during
:data:`MAX_CRASHES_PER_RECORDING` crashes becomes an error row instead of looping.

Why every worker watches its parent: a parent killed with ``kill -9`` (or by the OOM
killer) runs no clean-up, and orphaned workers would wait for work for ever, holding the
model and multiprocessing's resource tracker alive. On Linux the kernel kills a worker
when its parent dies (``PR_SET_PDEATHSIG``); elsewhere, and as a second guard, a thread in
the worker exits the process once its parent process id changes. The resource tracker
exits by itself once the parent and every worker are gone.

Results are yielded in completion order, not input order: the caller streams them.
Everything here is standard library plus the screening module, so it runs on a Pi too.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.batch.output import error_row
from edge.errors import DeviceError, HeartsoundError

__all__ = ["Job", "Outcome", "jobs_for", "screen_job", "screen_local"]

#: Exit code of an error row caused by a bug (any exception that is not a HeartsoundError).
BUG_EXIT_CODE = 1
#: Tasks queued per worker: enough to keep every worker busy between two results, few
#: enough that a broken pool has little to resubmit.
IN_FLIGHT_PER_WORKER = 2
#: A recording in flight during this many pool crashes is reported, not retried again.
MAX_CRASHES_PER_RECORDING = 3
#: Pools in a row that die before returning a single result: the workers cannot start.
MAX_BARREN_POOLS = 3
#: "spawn" starts workers from a clean interpreter: no copy of the parent's interpreter
#: state or of threads (a progress bar's monitor thread) that fork would inherit.
START_METHOD = "spawn"
#: prctl option that asks the kernel for a signal when the parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: How often a worker checks that its parent is alive, where the kernel cannot tell it.
PARENT_POLL_S = 0.5

Notify = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Job:
    """One recording to screen: ``name`` as the user gave it (the row's ``file``) and
    ``path``, what the worker opens (the same locally; absolute for a cluster)."""

    index: int
    name: str
    path: str


@dataclass
class Outcome:
    """What became of one recording: the screening result's fields, or an error."""

    index: int
    name: str
    result: dict | None = None
    error: str | None = None
    exit_code: int = 0
    pcm: np.ndarray | None = None  # the samples at the model's rate, only with keep_audio
    sha256: str | None = None  # of the file's bytes: a resumed job logs a recording once

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict:
        """The output row: exactly `heartsound screen FILE --json`'s object, or an error."""
        if self.ok:
            return self.result
        return error_row(self.name, self.error, self.exit_code)


def jobs_for(paths: Sequence[str | os.PathLike], *, absolute: bool = False) -> list[Job]:
    """Jobs in input order; ``absolute`` for workers whose working folder is not ours."""
    return [Job(i, str(p), str(Path(p).absolute()) if absolute else str(p))
            for i, p in enumerate(paths)]


def screen_job(screener, job: Job, keep_audio: bool = False) -> Outcome:
    """Read and screen one recording; every failure becomes an error outcome.

    The clock starts before the file is read, as in `heartsound screen FILE`, so
    ``latency_ms`` means the same in both.
    """
    from edge.audio import read_wav_for_screening

    start = time.perf_counter()
    rate = screener.spec.sample_rate_hz
    try:
        pcm, step = read_wav_for_screening(job.path, rate)
        result = screener.screen_pcm(pcm, rate, job.name, start=start, step=step)
        content = hashlib.sha256(Path(job.path).read_bytes()).hexdigest()
    except HeartsoundError as exc:
        return Outcome(job.index, job.name, error=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - one bad file must not end an archive's job
        return Outcome(job.index, job.name, exit_code=BUG_EXIT_CODE,
                       error=f"{job.name}: unexpected {type(exc).__name__} ({exc}); this is "
                       "a heartsound bug, please report it with the file")
    return Outcome(job.index, job.name, result=result.to_dict(),
                   pcm=pcm if keep_audio else None, sha256=content)


def screen_local(jobs: Sequence[Job], model: str | os.PathLike | None = None, *,
                 workers: int = 1, keep_audio: bool = False,
                 notify: Notify = _stderr) -> Iterator[Outcome]:
    """Outcomes of ``jobs`` as they complete; ``workers`` <= 1 screens in this process.

    ``notify`` receives one-line notes for a person (a worker died, what is retried).
    Closing the generator early (the caller failed) shuts the pool down. Workers are
    spawned, so a script that calls this with ``workers`` > 1 needs the usual
    ``if __name__ == "__main__":`` guard (the workers import the main module).
    """
    if workers <= 1:
        from edge.screening import Screener

        screener = Screener(model)
        for job in jobs:
            yield screen_job(screener, job, keep_audio)
        return
    yield from _PoolRun(jobs, model, workers, keep_audio, notify).outcomes()


# ------------------------------------------------------------------------ worker process

_WORKER: tuple | None = None  # (Screener, keep_audio), set once per worker process


def _load_worker(model: str | None, keep_audio: bool, parent_pid: int) -> None:
    """Pool initializer: die with the parent, then load the model once. Ctrl-C is the
    parent's to handle: a worker that caught it too would print a traceback of its own."""
    global _WORKER
    from edge.screening import Screener

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    _WORKER = (Screener(model), keep_audio)


def _die_with_parent(parent_pid: int) -> None:
    """End this process as soon as ``parent_pid`` (its parent) is gone, however it died.

    Called first thing in a child: if the parent died before the kernel was asked, the
    parent process id has already changed and the child exits here.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="heartsound-parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # no clean-up: the parent that would read our results is gone


def _screen_in_worker(job: Job) -> Outcome:
    screener, keep_audio = _WORKER
    return screen_job(screener, job, keep_audio)


# ------------------------------------------------------------------------ parent process


class _PoolRun:
    """One batch job over a process pool that is rebuilt whenever a worker dies."""

    def __init__(self, jobs: Sequence[Job], model, workers: int, keep_audio: bool,
                 notify: Notify) -> None:
        self.todo: deque[Job] = deque(jobs)
        self.model = None if model is None else str(model)
        self.workers = workers
        self.keep_audio = keep_audio
        self.notify = notify
        self.crashes: Counter[int] = Counter()
        self.running: dict[Future, Job] = {}
        self.pool: ProcessPoolExecutor | None = None
        self.barren_pools = 0  # pools in a row that broke before any result

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context(START_METHOD),
            initializer=_load_worker, initargs=(self.model, self.keep_audio, os.getpid()))

    def outcomes(self) -> Iterator[Outcome]:
        self.pool = self._new_pool()
        try:
            while self.todo or self.running:
                self._fill()
                done, _ = wait(self.running, return_when=FIRST_COMPLETED)
                lost: list[Job] = []
                for fut in sorted(done, key=lambda f: self.running[f].index):
                    job = self.running.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        lost.append(job)
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be sent
                        outcome = Outcome(job.index, job.name, exit_code=BUG_EXIT_CODE,
                                          error=f"{job.name}: worker failed with "
                                          f"{type(exc).__name__} ({exc}); please report it")
                    self.barren_pools = 0
                    yield outcome
                if lost:
                    yield from self._rebuild(lost)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _fill(self) -> None:
        limit = self.workers * IN_FLIGHT_PER_WORKER
        while self.todo and len(self.running) < limit:
            job = self.todo.popleft()
            self.running[self.pool.submit(_screen_in_worker, job)] = job

    def _rebuild(self, lost: list[Job]) -> Iterator[Outcome]:
        """A worker died: every unfinished recording goes to a fresh pool, in order.

        All futures of a broken pool fail, so the ones not yet collected are lost too.
        """
        lost = sorted(lost + list(self.running.values()), key=lambda j: j.index)
        self.running.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.barren_pools += 1
        if self.barren_pools > MAX_BARREN_POOLS:
            raise DeviceError(f"worker processes died {MAX_BARREN_POOLS + 1} times in a row "
                              "before returning any result; run with --workers 1 to see why")
        again, given_up = self._count_crashes(lost)
        yield from given_up
        self.notify(f"heartsound: a worker process died; screening the {len(again)} "
                    "unfinished recordings again in a fresh pool")
        self.todo.extendleft(reversed(again))
        self.pool = self._new_pool()

    def _count_crashes(self, jobs: list[Job]) -> tuple[list[Job], list[Outcome]]:
        again, given_up = [], []
        for job in jobs:
            self.crashes[job.index] += 1
            if self.crashes[job.index] >= MAX_CRASHES_PER_RECORDING:
                given_up.append(Outcome(
                    job.index, job.name, exit_code=DeviceError.exit_code,
                    error=f"{job.name}: the worker process screening it died "
                    f"{MAX_CRASHES_PER_RECORDING} times; screen it alone to see why"))
            else:
                again.append(job)
        return again, given_up
