"""A real OpenSSH server on 127.0.0.1 for deployment tests (Debian openssh-server).

Each server has its own host key, client key, authorized_keys, config and free port, and
never touches the system's sshd. The "device" is this machine: a tmp folder is the device
root, and the login user is the one running the tests (root in CI).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.venv_site import environment_site

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True)
    return path


class SshServer:
    """sshd -D on a free loopback port; `stop` ends it and every session it forked."""

    def __init__(self, folder: Path, *, tmpfs: tuple[Path, str] | None = None,
                 read_only: bool = False, share_environment: bool = False) -> None:
        """`tmpfs=(folder, size)`: run sshd in its own mount namespace where `folder` is a
        tmpfs of that size (a small disk the device can fill), invisible to the host.
        Several servers given the same folder are devices with the same paths but each
        its own disk, as a fleet of Pis. `read_only`: that disk is mounted read-only.
        `share_environment`: the sessions import this environment's packages (for deploys
        with --system-site-packages; see `_session_environment`)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = keygen(folder / "host_ed25519")
        self.client_key = keygen(folder / "client_ed25519")
        (folder / "authorized_keys").write_text((folder / "client_ed25519.pub").read_text())
        self.known_hosts = folder / "known_hosts"
        pub = " ".join((folder / "host_ed25519.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub}\n")
        self.pidfile = folder / "sshd.pid"
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {self.pidfile}",
            "UsePAM no", "StrictModes no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
            "LogLevel ERROR", "MaxStartups 50",
            *(_session_environment() if share_environment else []), ""]))
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.log = open(folder / "sshd.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [SSHD, "-D", "-e", "-f", str(self.config)]
        if tmpfs:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o size="$1",mode=755"$3" tmpfs "$2" && shift 3 && '
                   'exec "$@"', "sh", tmpfs[1], str(tmpfs[0]), ",ro" if read_only else "",
                   *cmd]
        self.proc = subprocess.Popen(cmd,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_listening()

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.folder / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen in time")

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes this server forked."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def cut_sessions(self) -> None:
        """Kill every open session: the client sees its connection drop mid-stream."""
        for pid in self.sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.cut_sessions()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _session_environment() -> list[str]:
    """sshd's SetEnv for the device's sessions: this environment's packages on
    PYTHONPATH, so that a device venv made with --system-site-packages reuses this
    machine's numpy and LiteRT when the tests run in a venv (see tests/venv_site.py).
    Only for devices whose deploys reuse them: on PYTHONPATH they come before a release's
    own, and a deploy that installs its own numpy would find it already there."""
    site = environment_site()
    return [f"SetEnv PYTHONPATH={site}"] if site else []
