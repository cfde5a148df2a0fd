"""Deploy over SSH against a real OpenSSH server on 127.0.0.1 (no mock of SSH).

The "device" is this machine: sshd started by the test with its own keys and config, a
tmp folder as the device root. Its venv uses --system-site-packages so that it reuses the
numpy and ai-edge-litert installed here (as a Raspberry Pi reuses apt's numpy) and the
project wheel goes in with --no-index: nothing is downloaded.

Every failure test runs against the same device, which holds one good release, and checks
that the device is still on it afterwards, with no half-made folder left and screening
still working: that is the promise under test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from edge.deploy import remote
from edge.deploy.bundle import (
    MANIFEST,
    SUMS,
    build_bundle,
    build_wheel,
    load_bundle,
    sha256_file,
)
from edge.deploy.install import sees_system_site
from edge.deploy.link import DEAD_LINK_BOUND_FACTOR
from edge.deploy.offline import UnsafeArchiveError, safe_extract
from edge.errors import DataError, DeviceError, UsageError
from tests.sshd_fixture import SSHD, SshServer, free_port, keygen
from tests.tcp_relay import Fault, TcpRelay

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HEARTSOUND = shutil.which("heartsound") or "heartsound"

pytestmark = pytest.mark.skipif(not Path(SSHD).exists() or os.geteuid() != 0,
                                reason="needs Debian's openssh-server and root (CI runs both)")


# ---------------------------------------------------------------------------------------------
# fixtures: one wheel, bundles, one server, one device with a good release


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, project_wheel):
    return build_bundle(tmp_path_factory.mktemp("b") / "bundle", wheel=project_wheel)


@pytest.fixture(scope="session")
def broken_bundle(tmp_path_factory, project_wheel):
    """A bundle whose model is damaged: hashes match (it was built so), screening cannot."""
    folder = tmp_path_factory.mktemp("broken")
    model = folder / "heartsound_int8.tflite"
    good = (REPO / "edge" / "models" / "heartsound_int8.tflite").read_bytes()
    model.write_bytes(good[:64] + bytes(len(good) - 64))
    return build_bundle(folder / "bundle", wheel=project_wheel, model=model)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = SshServer(tmp_path_factory.mktemp("sshd"), share_environment=True)
    yield server
    server.stop()


def options(server: SshServer, root: Path, **kw) -> remote.DeployOptions:
    base = dict(root=str(root), key=server.client_key, known_hosts=server.known_hosts,
                python=sys.executable, system_site_packages=True, offline=True)
    return remote.DeployOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def device(tmp_path_factory, sshd, bundle):
    """(root, release) of a device with one good release, deployed over SSH."""
    root = tmp_path_factory.mktemp("device") / "heartsound"
    name = remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root))
    return root, name


def on_device(server: SshServer, command: str) -> subprocess.CompletedProcess:
    """Run a command on the device through the real ssh client (strict host key check)."""
    return subprocess.run(
        ["ssh", "-i", str(server.client_key), "-p", str(server.port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
         f"{server.user}@127.0.0.1", command], capture_output=True, text=True, timeout=120)


def assert_still_on(server: SshServer, root: Path, name: str) -> None:
    """Current is `name`, no release is half-made, and the device still screens."""
    assert os.readlink(root / "current") == f"releases/{name}"
    leftovers = [p.name for p in (root / "releases").iterdir()
                 if (p / ".incomplete").exists()]
    assert leftovers == []
    res = on_device(server, f"{root}/current/bin/heartsound screen --json --no-log "
                            f"{EXAMPLES / 'physionet_b0001_normal.wav'}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["decision"] in ("normal", "abnormal", "unsure")


def releases(root: Path) -> set[str]:
    return {p.name for p in (root / "releases").iterdir()}


# ---------------------------------------------------------------------------------------------
# bundle


def test_bundle_manifest_hashes_every_file(bundle, tmp_path):
    files = {p.relative_to(bundle.path).as_posix() for p in bundle.path.rglob("*")
             if p.is_file()}
    assert files == set(bundle.files)
    assert set(bundle.manifest["files"]) == files - {MANIFEST, SUMS}
    check = subprocess.run(["sha256sum", "--check", "--strict", SUMS], cwd=bundle.path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert bundle.manifest["requirements"] == ["numpy>=1.26", "ai-edge-litert>=2.3.0"]
    assert bundle.manifest["wheel"].startswith("wheels/heartsound-")
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    (copy / bundle.role("model")).write_bytes(b"tampered")
    with pytest.raises(UsageError, match="changed since the bundle was built"):
        load_bundle(copy)


def test_target_parse():
    assert remote.Target.parse("pi@raspberrypi.local") == remote.Target("raspberrypi.local",
                                                                        "pi", 22)
    assert remote.Target.parse("root@127.0.0.1:2222") == remote.Target("127.0.0.1", "root",
                                                                       2222)
    assert remote.Target.parse("[::1]:2200").host == "::1"
    with pytest.raises(UsageError, match="expected user@host"):
        remote.Target.parse("pi@host:99999")


# ---------------------------------------------------------------------------------------------
# a full deploy


def test_full_deploy_installs_a_working_release(sshd, device, bundle):
    root, name = device
    assert remote.RELEASE_NAME.match(name)
    assert_still_on(sshd, root, name)
    rel = root / "releases" / name
    # the device runs the deployed code, not the host's checkout
    where = on_device(sshd, f"{root}/current/bin/python -c 'import edge, os; "
                            "print(os.path.realpath(edge.__file__))'")
    assert where.stdout.strip().startswith(str(rel) + "/lib/")
    for f, entry in bundle.manifest["files"].items():
        assert sha256_file(rel / "bundle" / f) == entry["sha256"]
    # the screening log's folder (patient data) is owner-only
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o700
    env = (rel / "etc" / "heartsound.env").read_text()
    assert f"HEARTSOUND_HOME={root}/data" in env and "@ROOT@" not in env
    unit = (rel / "etc" / "heartsound-screen.service").read_text()
    assert f"ExecStart={root}/current/bin/heartsound screen --mic" in unit
    assert "UMask=0077" in unit and "@" not in unit.replace("multi-user", "")


def test_a_deploy_keeps_the_current_releases_view_of_system_packages(sshd, bundle, tmp_path):
    """A flashed station's venv sees Debian's python3-pyaudio: a deploy that does not say
    otherwise keeps that (and says so), or the microphone service would stop at the next
    update."""
    root, target = tmp_path / "heartsound", remote.Target.parse(sshd.address)
    remote.deploy(bundle, target, options(sshd, root, system_site_packages=True))
    notes: list[str] = []
    name = remote.deploy(bundle, target, options(sshd, root, system_site_packages=None),
                         note=notes.append)
    assert os.readlink(root / "current") == f"releases/{name}"
    assert sees_system_site((root / "releases" / name / "pyvenv.cfg").read_text())
    assert any("as the current release's does" in n for n in notes), notes


def test_cli_deploy_bench_and_rollback_with_invoke(sshd, device, bundle):
    """invoke deploy / bench --host / rollback run the heartsound command end to end."""
    root, first = device
    common = ["--host", sshd.address, "--key", str(sshd.client_key), "--known-hosts",
              str(sshd.known_hosts), "--root", str(root)]

    def invoke(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["invoke", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300)

    res = invoke("deploy", *common, "--remote-python", sys.executable,
                 "--system-site-packages", "--offline", "--bundle", str(bundle.path))
    assert res.returncode == 0, res.stderr
    second = os.readlink(root / "current").removeprefix("releases/")
    assert second != first and f"deployed {second}" in res.stdout
    assert_still_on(sshd, root, second)

    res = invoke("bench", *common, "--runs", "20")
    assert res.returncode == 0, res.stderr
    assert second in res.stdout and "whole window" in res.stdout
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("whole window"))
    mean_ms = float(row.split()[2])
    assert 0 < mean_ms < 10_000
    # the bundle carries the model's float32 companion, so the device times the baseline
    assert "the speed of the float32 .tflite" in res.stdout, res.stdout

    res = invoke("rollback", *common)
    assert res.returncode == 0, res.stderr
    assert f"current is now {first}" in res.stdout
    assert_still_on(sshd, root, first)

    res = subprocess.run([HEARTSOUND, "deploy", "--rollback", *common], capture_output=True,
                         text=True)
    assert res.returncode == DeviceError.exit_code
    assert "nothing to roll back to" in res.stderr and len(res.stderr.splitlines()) == 1
    assert_still_on(sshd, root, first)


# ---------------------------------------------------------------------------------------------
# failures: each one line, and the device stays on its release


def test_failed_smoke_screening_keeps_previous_release(sshd, device, broken_bundle):
    root, name = device
    current = os.readlink(root / "current").removeprefix("releases/")
    before = releases(root)
    # a lock left two hours ago by a deploy whose link died does not block this one
    (root / remote.LOCK).mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(root / remote.LOCK, (two_hours_ago, two_hours_ago))
    with pytest.raises(DeviceError) as err:
        remote.deploy(broken_bundle, remote.Target.parse(sshd.address), options(sshd, root))
    msg = str(err.value)
    print(msg)
    assert "failed at smoke screening" in msg and f"stays on {current}" in msg
    assert "half-made release was removed" in msg and "\n" not in msg
    assert releases(root) == before and not (root / remote.LOCK).exists()
    assert_still_on(sshd, root, current)


def test_concurrent_deploy_is_refused(sshd, device, bundle):
    root, _ = device
    current = os.readlink(root / "current")
    (root / remote.LOCK).mkdir()  # another deploy is running right now
    try:
        with pytest.raises(DeviceError, match="stopped at taking the deploy lock: another "
                                              "deploy or rollback .* is running"):
            remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root))
    finally:
        (root / remote.LOCK).rmdir()
    assert os.readlink(root / "current") == current


def test_connection_cut_during_upload_keeps_previous_release(sshd, device, bundle):
    root, _ = device
    current = os.readlink(root / "current").removeprefix("releases/")
    before = releases(root)
    cut = []

    def progress(name: str, sent: int, total: int) -> None:
        if name.startswith("wheels/") and sent >= 32_768 and not cut:
            cut.append(name)
            sshd.cut_sessions()  # the server side of this connection dies mid-file

    with pytest.raises(DeviceError) as err:
        remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root),
                      progress=progress)
    assert cut, "the upload never reached the wheel"
    msg = str(err.value)
    print(msg)
    assert f"failed at uploading {cut[0]}: connection lost" in msg, msg
    assert f"stays on {current}" in msg and "\n" not in msg
    assert releases(root) == before  # cleaned up over a fresh connection
    assert_still_on(sshd, root, current)


def test_unknown_host_key_is_refused(sshd, device, tmp_path):
    root, _ = device
    current = os.readlink(root / "current")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(DeviceError, match=r"host key not in .*ssh-keyscan -p "):
        remote.list_releases(remote.Target.parse(sshd.address),
                             options(sshd, root, known_hosts=empty))
    # through the command line: exit code 7 and one line, no traceback
    res = subprocess.run([HEARTSOUND, "deploy", "--host", sshd.address, "--key",
                          str(sshd.client_key), "--known-hosts", str(empty), "--root",
                          str(root), "--bundle", str(tmp_path / "unused")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == DeviceError.exit_code
    assert res.stderr.count("\n") <= 2 and "host key not in" in res.stderr
    assert "Traceback" not in res.stderr
    assert os.readlink(root / "current") == current


def test_changed_host_key_is_refused(sshd, device, tmp_path):
    root, _ = device
    other = keygen(tmp_path / "other_host")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " +
                     " ".join((tmp_path / "other_host.pub").read_text().split()[:2]) + "\n")
    assert other.exists()
    with pytest.raises(DeviceError, match="host key CHANGED"):
        remote.list_releases(remote.Target.parse(sshd.address),
                             options(sshd, root, known_hosts=known))


def test_wrong_key_is_refused(sshd, device, tmp_path):
    root, name = device
    wrong = keygen(tmp_path / "wrong")
    with pytest.raises(DeviceError, match="login refused with key .*authorized_keys"):
        remote.list_releases(remote.Target.parse(sshd.address),
                             options(sshd, root, key=wrong))


def test_unreachable_host(sshd, tmp_path):
    target = remote.Target.parse(f"{sshd.user}@127.0.0.1:{free_port()}")
    with pytest.raises(DeviceError, match="cannot connect .*runs sshd"):
        remote.list_releases(target, options(sshd, tmp_path, link_timeout=3))


def test_device_without_python_311(sshd, device, bundle, tmp_path):
    root, _ = device
    current = os.readlink(root / "current").removeprefix("releases/")
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9.2\n")
    old.chmod(0o755)
    before = releases(root)
    with pytest.raises(DeviceError, match=r"'.*python3.9' is Python 3.9.2, heartsound needs "
                                          r"3.11\+.*nothing was changed"):
        remote.deploy(bundle, remote.Target.parse(sshd.address),
                      options(sshd, root, python=str(old)))
    with pytest.raises(DeviceError, match="no '/nonexistent/python3' on the device"):
        remote.deploy(bundle, remote.Target.parse(sshd.address),
                      options(sshd, root, python="/nonexistent/python3"))
    assert releases(root) == before
    assert_still_on(sshd, root, current)


def test_user_values_never_reach_the_shell_unquoted(sshd, tmp_path):
    """A --root crafted to run a command creates odd folder names, never the command."""
    evil = f"{tmp_path}/a b;touch {tmp_path}/pwned;$(touch {tmp_path}/pwned2)"
    with pytest.raises(DeviceError, match="characters a systemd unit cannot take"):
        remote.list_releases(remote.Target.parse(sshd.address), options(sshd, Path(evil)))
    assert list(tmp_path.iterdir()) == []  # refused before anything reached the device
    # a name the shell would split or expand is still one argument once it gets there
    odd = tmp_path / "x"
    conn = remote.connect(remote.Target.parse(sshd.address), options(sshd, odd))
    try:
        device = remote.Device(conn, remote.Target.parse(sshd.address))
        device.run("probe", remote._sh("touch", "--", f"{odd}/a b;touch {tmp_path}/pwned"))
    except remote.StepFailed as exc:
        assert "No such file" in exc.reason
    finally:
        conn.close()
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A second sshd whose device root is a 24 MB tmpfs in its own mount namespace."""
    folder = tmp_path_factory.mktemp("smalldisk")
    disk = folder / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {disk}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here ({probe.stderr!r})")
    server = SshServer(folder / "sshd", tmpfs=(disk, "24m"), share_environment=True)
    yield server, disk
    server.stop()


def test_full_disk_keeps_previous_release(small_disk, bundle):
    server, disk = small_disk
    target = remote.Target.parse(server.address)
    root = disk / "heartsound"
    first = remote.deploy(bundle, target, options(server, root, min_free_mb=4))
    # fill the device's disk (through ssh: the tmpfs exists only in sshd's namespace)
    fill = on_device(server, f"head -c $(( $(df -Pk {disk} | tail -1 | awk '{{print $4}}') "
                             f"* 1024 - 400000 )) /dev/zero > {disk}/filler; df -Pk {disk}")
    assert fill.returncode == 0, fill.stderr
    listing = f"ls -A {root}/releases; readlink {root}/current"
    before = on_device(server, listing).stdout

    # the free-space check refuses before anything is written ...
    with pytest.raises(DeviceError, match=r"checking free space: device disk full at .*MB "
                                          r"free, need about"):
        remote.deploy(bundle, target, options(server, root))
    assert on_device(server, listing).stdout == before
    # ... and a disk that fills up during the install is recognised as such too
    with pytest.raises(DeviceError) as err:
        remote.deploy(bundle, target, options(server, root, min_free_mb=0))
    msg = str(err.value)
    print(msg)
    assert "device disk full at" in msg and f"stays on {first}" in msg, msg
    assert on_device(server, listing).stdout == before
    on_device(server, f"rm -f {disk}/filler")
    res = on_device(server, f"{root}/current/bin/heartsound screen --json --no-log "
                            f"{EXAMPLES / 'physionet_d0014_abnormal.wav'}")
    assert res.returncode == 0 and json.loads(res.stdout)["decision"]


# ---------------------------------------------------------------------------------------------
# safe extraction (the offline bundle itself: tests/deploy/test_offline.py)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


MALICIOUS = {
    "dot-dot": [(_member("../escape"), b"x")],
    "absolute": [(_member("/tmp/heartsound-escape-abs"), b"x")],
    "symlink-outside": [(_member("evil", tarfile.SYMTYPE, "../.."), None)],
    "symlink-absolute": [(_member("evil", tarfile.SYMTYPE, "/etc"), None)],
    "dot-dot-inside-link": [(_member("d", tarfile.SYMTYPE, "."), None),
                            (_member("d/../escape"), b"x")],
    "hardlink-outside": [(_member("h", tarfile.LNKTYPE, "../outside.txt"), None)],
    "device-node": [(_member("dev", tarfile.CHRTYPE), None)],
    "fifo": [(_member("fifo", tarfile.FIFOTYPE), None)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_safe_extract_refuses_malicious_archives(tmp_path, case):
    (tmp_path / "outside.txt").write_text("keep")
    archive = _tar(tmp_path / "evil.tar.gz", MALICIOUS[case])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        safe_extract(archive, dest)
    assert isinstance(UnsafeArchiveError("x"), DataError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "evil.tar.gz", "outside.txt"]
    assert not Path("/tmp/heartsound-escape-abs").exists()
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_safe_extract_keeps_links_inside_and_masks_modes(tmp_path):
    setuid = _member("bin/tool")
    setuid.mode = 0o4777
    archive = _tar(tmp_path / "ok.tar.gz", [
        (_member("bin", tarfile.DIRTYPE), None), (setuid, b"#!/bin/sh\n"),
        (_member("link", tarfile.SYMTYPE, "bin/tool"), None),
        (_member("hard", tarfile.LNKTYPE, "bin/tool"), None)])
    names = safe_extract(archive, tmp_path / "dest")
    assert names == ["bin", "bin/tool", "link", "hard"]
    assert stat.S_IMODE((tmp_path / "dest/bin/tool").stat().st_mode) == 0o755
    assert (tmp_path / "dest/link").read_text() == "#!/bin/sh\n"
    with pytest.raises(UnsafeArchiveError, match="not a readable tar"):
        safe_extract(tmp_path / "dest/bin/tool", tmp_path / "dest2")


def test_safe_extract_does_not_write_through_a_link_already_on_disk(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "pre").symlink_to(tmp_path)  # e.g. left by an earlier, careless extraction
    archive = _tar(tmp_path / "a.tar.gz", [(_member("pre/escape"), b"x")])
    with pytest.raises(UnsafeArchiveError, match="would be written outside"):
        safe_extract(archive, dest)
    assert not (tmp_path / "escape").exists()



# ---------------------------------------------------------------------------
# a faulty link: a relay between client and sshd that stalls, cuts or flips bits


LINK_TIMEOUT_S = 2.0  # --link-timeout in these tests: a dead link is noticed in seconds
TRACEBACK_TEXT = ("Traceback", "Mismatched MAC", "Socket exception", "Exception in thread")


@pytest.fixture(scope="module")
def link_device(tmp_path_factory, sshd, bundle):
    """(root, first release) of a device of its own, for the link fault tests."""
    root = tmp_path_factory.mktemp("linkdev") / "heartsound"
    name = remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root))
    return root, name


def relay_to(server: SshServer, fault: Fault | None, folder: Path) -> tuple[TcpRelay, Path]:
    """A relay in front of `server` and a known_hosts naming the server's key at its port."""
    relay = TcpRelay(server.port, fault)
    known = folder / f"known_hosts_{relay.port}"
    pub = " ".join((server.folder / "host_ed25519.pub").read_text().split()[:2])
    known.write_text(f"[127.0.0.1]:{relay.port} {pub}\n")
    return relay, known


def cli_deploy(server: SshServer, relay: TcpRelay, known: Path, root: Path,
               bundle_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`heartsound deploy` through the relay; (result, seconds it took)."""
    start = time.monotonic()
    res = subprocess.run(
        [HEARTSOUND, "deploy", "--host", f"{server.user}@127.0.0.1:{relay.port}", "--key",
         str(server.client_key), "--known-hosts", str(known), "--root", str(root),
         "--remote-python", sys.executable, "--system-site-packages", "--offline",
         "--bundle", str(bundle_dir), "--link-timeout", str(LINK_TIMEOUT_S)],
        capture_output=True, text=True, timeout=300)
    return res, time.monotonic() - start


def assert_one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == DeviceError.exit_code, (res.returncode, res.stderr)
    assert not any(t in res.stderr for t in TRACEBACK_TEXT), res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heartsound: "), res.stderr
    return lines[0]


# start-up, preflight and bundle loading, beside the bound the help states for the link
STARTUP_ALLOWANCE_S = 30.0


def test_stalled_link_ends_the_deploy_within_its_bound(sshd, link_device, bundle, tmp_path):
    """A relay that stops forwarding after 200 kB (no reset, no close): exit 7 and one
    line within the stated bound, lock released, and the next deploy goes through."""
    root, _ = link_device
    current = os.readlink(root / "current").removeprefix("releases/")
    before = releases(root)
    relay, known = relay_to(sshd, Fault("stall", 200_000), tmp_path)
    with relay:
        res, took = cli_deploy(sshd, relay, known, root, bundle.path)
    assert relay.fired.is_set()
    line = assert_one_line_error(res)
    print(line, f"({took:.1f} s)")
    assert "connection lost: the link went silent" in line
    assert f"the device stays on {current} (read back)" in line
    assert took < DEAD_LINK_BOUND_FACTOR * LINK_TIMEOUT_S + STARTUP_ALLOWANCE_S
    assert not (root / remote.LOCK).exists() and releases(root) == before
    assert_still_on(sshd, root, current)
    name = remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root))
    assert_still_on(sshd, root, name)


def test_a_dead_links_lock_is_broken_by_the_next_deploy(sshd, link_device, bundle, tmp_path):
    """The link stays dead after the stall (no clean-up possible): the lock names a
    process that has ended, so the next deploy breaks it with a note, not after an hour."""
    root, _ = link_device
    current = os.readlink(root / "current").removeprefix("releases/")
    before = releases(root)
    relay, known = relay_to(sshd, Fault("stall", 200_000, dead_after=True), tmp_path)
    with relay:
        res, took = cli_deploy(sshd, relay, known, root, bundle.path)
        line = assert_one_line_error(res)
    print(line, f"({took:.1f} s)")
    assert f"the device stays on {current} (the switch to " in line
    assert "was never sent); the next deploy removes the lock" in line
    assert took < DEAD_LINK_BOUND_FACTOR * LINK_TIMEOUT_S + STARTUP_ALLOWANCE_S
    owner = (root / remote.LOCK / remote.LOCK_OWNER).read_text().split()
    assert owner[1] == socket.gethostname() and len(owner) == 5
    notes: list[str] = []
    name = remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root),
                         note=notes.append)
    assert len(notes) == 1 and f"process {owner[2]} on this host has ended" in notes[0]
    assert releases(root) - before == {name}  # the half-made release went too
    assert_still_on(sshd, root, name)


@pytest.mark.parametrize("reachable", [True, False], ids=["read-back", "unreachable"])
def test_link_cut_after_the_switch_names_what_the_device_runs(sshd, link_device, bundle,
                                                              tmp_path, reachable):
    """The link dies right after `current` was switched: the message names the new
    release (read back over a new connection), or says it is unknown; never 'stays on'."""
    import threading

    root, _ = link_device
    old = os.readlink(root / "current")
    relay, known = relay_to(sshd, None, tmp_path)
    done, there = threading.Event(), releases(root)

    def cut_at_switch() -> None:
        # the switch's answer is held back 0.5 s once the release is complete, and the
        # link is cut the moment `current` moves: the client never hears that it did
        while not done.is_set():
            made = releases(root) - there
            if any((root / "releases" / n / "etc").exists() and
                   not (root / "releases" / n / ".incomplete").exists() for n in made):
                relay.delay_down = 0.5
            if os.readlink(root / "current") != old:
                relay.cut_all(dead_after=not reachable)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=cut_at_switch, daemon=True)
    watcher.start()
    target = remote.Target.parse(f"{sshd.user}@127.0.0.1:{relay.port}")
    with relay, pytest.raises(DeviceError) as err:
        try:
            remote.deploy(bundle, target, options(sshd, root, known_hosts=known,
                                                  link_timeout=LINK_TIMEOUT_S))
        finally:
            done.set()
    msg = str(err.value)
    print(msg)
    new = os.readlink(root / "current").removeprefix("releases/")
    assert f"releases/{new}" != old and "stays on" not in msg
    if reachable:
        assert f"the switch was done: the device runs {new} (read back)" in msg
        assert not (root / remote.LOCK).exists()
    else:
        assert f"what the device runs is unknown: the link failed while switching from " \
               f"{old.removeprefix('releases/')} to {new}" in msg
    assert_still_on(sshd, root, new)
    shutil.rmtree(root / remote.LOCK, ignore_errors=True)


@pytest.mark.parametrize("fault", [Fault("flip", 10_000, "down"), Fault("cut", 459_000)],
                         ids=["bit-flip", "cut"])
def test_link_faults_print_one_line_and_no_library_traceback(sshd, link_device, bundle,
                                                             tmp_path, fault):
    root, _ = link_device
    current = os.readlink(root / "current").removeprefix("releases/")
    relay, known = relay_to(sshd, fault, tmp_path)
    with relay:
        res, _ = cli_deploy(sshd, relay, known, root, bundle.path)
    assert relay.fired.is_set()
    line = assert_one_line_error(res)
    print(line)
    now = os.readlink(root / "current").removeprefix("releases/")
    assert f"{now} (read back)" in line
    assert not (root / remote.LOCK).exists()
    assert_still_on(sshd, root, now)
    assert now == current or "the switch was done" in line


# ---------------------------------------------------------------------------------------------
# rollback: the release that ran before the current one


def test_rollback_after_rollback_and_deploy_goes_to_what_ran_before(sshd, bundle, tmp_path):
    """A, B, rollback (A), C: the release before C is A, not B (the one rolled back
    from), and pruning to --keep 2 keeps A although B and C are newer."""
    root = tmp_path / "heartsound"
    target = remote.Target.parse(sshd.address)
    a = remote.deploy(bundle, target, options(sshd, root))
    b = remote.deploy(bundle, target, options(sshd, root))
    assert remote.rollback(target, options(sshd, root)) == (b, a)
    c = remote.deploy(bundle, target, options(sshd, root, keep=2))
    assert releases(root) == {a, b, c}  # a is kept: it ran before c
    assert (root / remote.HISTORY).read_text().split() == [a, c]
    assert remote.list_releases(target, options(sshd, root))["previous"] == a
    assert remote.rollback(target, options(sshd, root)) == (c, a)
    assert_still_on(sshd, root, a)
    with pytest.raises(DeviceError, match=f"no release ran before {a}.*nothing to roll back"):
        remote.rollback(target, options(sshd, root))
    d = remote.deploy(bundle, target, options(sshd, root, keep=2))
    assert a in releases(root) and d in releases(root)  # running d and previous a stay
    assert (root / remote.HISTORY).read_text().split() == [a, d]


# ---------------------------------------------------------------------------------------------
# by hand on the device: the release's model and the installation's log


def test_hand_screening_on_the_device_uses_the_release_model_and_log(sshd, project_wheel,
                                                                     tmp_path):
    """deploy --model X: `current/bin/heartsound screen` typed on the device (no service
    environment) screens with X and logs to ROOT/data, where history --pull reads."""
    other = tmp_path / "other_int8.tflite"  # the shipped model plus trailing bytes: another
    other.write_bytes((REPO / "edge/models/heartsound_int8.tflite").read_bytes() + bytes(16))
    bundle = build_bundle(tmp_path / "bundle", wheel=project_wheel, model=other)
    root = tmp_path / "heartsound"
    remote.deploy(bundle, remote.Target.parse(sshd.address), options(sshd, root))
    home = tmp_path / "home"  # the login's home for the hand command, to see what lands there
    home.mkdir()
    res = on_device(sshd, f"env -u HEARTSOUND_HOME -u HEARTSOUND_MODEL HOME={home} "
                          f"{root}/current/bin/heartsound screen --json "
                          f"{EXAMPLES / 'physionet_b0001_normal.wav'}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model_sha256"] == sha256_file(other)
    assert not (home / ".heartsound").exists()
    with sqlite3.connect(root / "data" / "screenings.db") as db:
        assert db.execute("SELECT model_sha256 FROM screenings").fetchall() == [
            (sha256_file(other),)]
