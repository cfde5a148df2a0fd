"""Batch screening on a Ray cluster: the jobs and outcomes of :mod:`edge.batch.pool`, run by
Ray actors instead of local processes.

Imported only for ``heartsound screen --ray``: a Raspberry Pi never loads Ray.

Why actors and not tasks: an actor loads the model once and keeps it, as a pool worker
does; a task would load it for every recording.
Why the model travels as bytes: a few kilobytes, and the client's model file then need
not exist on the other nodes. The recordings do not travel: an archive lives on storage
mounted at the same path on every node, and actors read it there (the client sends
absolute paths), so the client never becomes the bottleneck.
Why a plain TCP connection is tried first: ``ray.init`` retries an unreachable address
for a long time; a person who mistyped the head's address deserves one line in seconds.
Why an actor that dies is dropped and its recordings resubmitted: the node it ran on
may be gone; the job finishes on the others (a replacement starts only where a CPU is
free) and a recording in flight during :data:`MAX_CRASHES_PER_RECORDING` deaths
becomes an error row instead of looping.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edge.batch.pool import MAX_CRASHES_PER_RECORDING, Job, Outcome, screen_job
from edge.errors import DeviceError, UsageError

__all__ = ["connect", "screen_ray"]

#: Seconds to wait for the head's port to accept a TCP connection.
CONNECT_TIMEOUT_S = 5.0
#: Calls queued per actor: one running, one waiting, so an actor never idles between two.
IN_FLIGHT_PER_ACTOR = 2
#: Replacement actors allowed per original one over a whole job.
REPLACEMENTS_PER_ACTOR = 2
#: Addresses that Ray resolves itself (no host:port to try first).
AUTO_ADDRESSES = ("auto", "local")
CLIENT_SCHEME = "ray://"
INSTALL_HINT = "install the 'cluster' extra: pip install 'heartsound[cluster]'"
BACKEND_ENV = "HEARTSOUND_INTERPRETER"
# A gRPC server (Ray's head) answers an HTTP/2 client preface with a SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, no flags
HTTP2_FRAME_HEADER = 9  # bytes: length (3), type (1), flags (1), stream id (4)
HTTP2_SETTINGS = 0x04

Notify = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.removeprefix(CLIENT_SCHEME)
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray {address}: give the head's HOST:PORT (port 6379 unless "
                         "`ray start --head --port` said otherwise), ray://HOST:10001 or auto")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, where ``ray.init`` would retry for minutes: nothing
    listening, or something listening that does not speak gRPC (Ray's head and its
    client server both do; a gRPC server answers the HTTP/2 preface with SETTINGS)."""
    if address in AUTO_ADDRESSES:
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            head = _recv_exactly(sock, HTTP2_FRAME_HEADER)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DeviceError(f"Ray cluster at {address} is unreachable ({reason}); start it with "
                          "`ray start --head` or give the head's HOST:PORT") from None
    if len(head) < HTTP2_FRAME_HEADER or head[3] != HTTP2_SETTINGS:
        raise DeviceError(f"{address} answers but is not a Ray head (it does not speak gRPC); "
                          "give the port that `ray start --head` printed (6379 by default)")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
RAY_TOKEN_ENVS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_token_given() -> bool:
    """Did the user hand Ray a token (value or file) through the environment?"""
    return any(os.environ.get(v) for v in RAY_TOKEN_ENVS)


def send_saved_token() -> None:
    """Send our Ray token when we have one; call before Ray is imported.

    Why: a cluster started while ``~/.ray/auth_token`` existed (Ray 2.60 writes it on a
    local ``ray.init()``) refuses clients without it ("Authentication token is missing"),
    one without authentication accepts a client that sends it, and Ray's client sends it
    only when RAY_AUTH_MODE says so (its C++ side reads that once, at import).
    """
    saved = Path.home() / ".ray" / "auth_token"
    if os.environ.get(RAY_AUTH_MODE_ENV) is None and (ray_token_given() or saved.is_file()):
        os.environ[RAY_AUTH_MODE_ENV] = "token"


def connect(address: str):
    """The ``ray`` module, connected to the cluster at ``address`` (DeviceError if not)."""
    send_saved_token()
    ray = _import_ray()
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; all mean "not connected"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeviceError(f"cannot join the Ray cluster at {address} ({first}); check that "
                          "it runs the same Ray and Python versions as this machine") from None
    return ray


class ScreenActor:
    """One model loaded on one CPU of the cluster; screens recording after recording."""

    def __init__(self, model: bytes, backend: str | None, keep_audio: bool) -> None:
        from edge.screening import Screener

        fd, path = tempfile.mkstemp(suffix=".tflite", prefix="heartsound-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(model)
            self.screener = Screener(path, backend=backend)  # read into memory here
        finally:
            os.unlink(path)
        self.keep_audio = keep_audio

    def screen(self, job: Job) -> Outcome:
        return screen_job(self.screener, job, self.keep_audio)


def screen_ray(jobs: Sequence[Job], model: str | os.PathLike | None, address: str, *,
               actors: int | None = None, keep_audio: bool = False,
               notify: Notify = _stderr) -> Iterator[Outcome]:
    """Outcomes of ``jobs`` (absolute paths) as Ray actors complete them.

    Connects at once (an unreachable cluster fails here, not at the first result);
    ``actors`` defaults to one per CPU of the cluster. Disconnects when the returned
    generator ends or is closed.
    """
    from edge.screening import default_model_path

    data = Path(model if model is not None else default_model_path()).read_bytes()
    ray = connect(address)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if actors and actors > cpus:
            notify(f"heartsound: the Ray cluster has {cpus} CPUs; starting {cpus} actors, "
                   f"not {actors} (an actor without a CPU would hold its recordings forever)")
        run = _RayRun(ray, jobs, data, min(actors or cpus, cpus), keep_audio, notify)
    except BaseException:
        ray.shutdown()
        raise
    return run.outcomes()


class _RayRun:
    """One batch job over a set of actors that shrinks when actors die."""

    def __init__(self, ray, jobs: Sequence[Job], model: bytes, n: int, keep_audio: bool,
                 notify: Notify) -> None:
        self.ray, self.notify = ray, notify
        self.todo = list(reversed(jobs))  # a stack: pop() takes the next job in input order
        self.remote = ray.remote(num_cpus=1)(ScreenActor)
        self.model_ref = ray.put(model)
        self.args = (self.model_ref, os.environ.get(BACKEND_ENV) or None, keep_audio)
        self.load: dict = {self._start(): 0 for _ in range(n)}  # actor -> calls in flight
        self.running: dict = {}  # ObjectRef -> (actor, job)
        self.crashes: dict[int, int] = {}
        self.spare = REPLACEMENTS_PER_ACTOR * n
        self.results = 0
        self.first_death: str | None = None

    def _start(self):
        return self.remote.remote(*self.args)

    def outcomes(self) -> Iterator[Outcome]:
        try:
            while self.todo or self.running:
                self._fill()
                (ref,), _ = self.ray.wait(list(self.running), num_returns=1)
                actor, job = self.running.pop(ref)
                self.load[actor] = self.load.get(actor, 1) - 1
                outcome = self._collect(ref, actor, job)
                if outcome is not None:
                    self.results += 1
                    yield outcome
        finally:
            for actor in self.load:
                self.ray.kill(actor)
            self.ray.shutdown()

    def _fill(self) -> None:
        if not self.load:
            raise DeviceError(f"every Ray actor died ({self.first_death}); "
                              + ("check that heartsound and its 'edge' extra are installed "
                                 "on every node" if not self.results else "the cluster "
                                 "lost its nodes; rerun with --resume"))
        while self.todo:
            actor = min(self.load, key=self.load.get)
            if self.load[actor] >= IN_FLIGHT_PER_ACTOR:
                return
            job = self.todo.pop()
            self.running[actor.screen.remote(job)] = (actor, job)
            self.load[actor] += 1

    def _collect(self, ref, actor, job: Job) -> Outcome | None:
        from ray.exceptions import RayActorError

        try:
            return self.ray.get(ref)
        except RayActorError as exc:
            return self._actor_died(actor, job, exc)
        except Exception as exc:  # noqa: BLE001 - a task error must not end the job
            return Outcome(job.index, job.name, exit_code=1,
                           error=f"{job.name}: Ray task failed ({type(exc).__name__}); "
                           "screen it alone to see why")

    def _actor_died(self, actor, job: Job, exc: Exception) -> Outcome | None:
        """Drop the actor, requeue the recording; a replacement only where a CPU is free."""
        if actor in self.load:
            del self.load[actor]
            self.first_death = self.first_death or _first_line(exc)
            self.notify("heartsound: a Ray actor died; its unfinished recordings go to the "
                        f"others ({len(self.load)} left)")
            if self.spare > 0 and self.ray.available_resources().get("CPU", 0) >= 1:
                self.spare -= 1
                self.load[self._start()] = 0
        self.crashes[job.index] = self.crashes.get(job.index, 0) + 1
        if self.crashes[job.index] >= MAX_CRASHES_PER_RECORDING:
            return Outcome(job.index, job.name, exit_code=DeviceError.exit_code,
                           error=f"{job.name}: the Ray actor screening it died "
                           f"{MAX_CRASHES_PER_RECORDING} times; screen it alone to see why")
        self.todo.append(job)
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
