"""The offline (USB stick) bundle: built with pip for a target, installed with no index.

The bundles are built by the real `heartsound deploy --offline-bundle` command, which
downloads the target's wheels from PyPI through pip (pip's own cache keeps a second run
from downloading them again); those tests are marked `network` and skipped, saying why,
when PyPI cannot be reached. Installs run in fresh venvs (no system site packages) with
this machine's pip configuration switched off (PIP_CONFIG_FILE=/dev/null): the bundle's
wheels are all they can use.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from edge.deploy import install
from edge.deploy.bundle import build_bundle, build_wheel, device_requirements, sha256_file
from edge.deploy.install import InstallError
from edge.deploy.wheels import (
    WheelTarget,
    download_dependency_wheels,
    manylinux_platforms,
    parse_target,
)
from edge.errors import DownloadError, UsageError
from tests.sshd_fixture import SSHD, SshServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "physionet_a0336_abnormal.wav"
HEARTSOUND = shutil.which("heartsound") or "heartsound"
PYPI_PROBE = "https://pypi.org/simple/ai-edge-litert/"
VERSION_TOP = "heartsound-{version}-offline"


@pytest.fixture(scope="session")
def pypi() -> None:
    """Skip (with the reason) when PyPI cannot be reached: the build downloads from it."""
    try:
        urllib.request.urlopen(urllib.request.Request(PYPI_PROBE, method="HEAD"),
                               timeout=20).close()
    except OSError as exc:
        pytest.skip(f"PyPI unreachable ({exc}): building an offline bundle downloads the "
                    "target's wheels from it")


def build(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`heartsound deploy --offline-bundle OUT ARGS` as a user runs it (pip config kept)."""
    return subprocess.run([HEARTSOUND, "deploy", "--offline-bundle", str(out), *args],
                          capture_output=True, text=True, timeout=900, cwd=out.parent)


def device_env(**extra: str) -> dict[str, str]:
    """A device's environment: no pip configuration, no index, no PYTHONPATH to this repo."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, **extra}


def unpack(archive: Path, where: Path) -> Path:
    where.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(where)], check=True)
    return next(where.iterdir())


def payload_manifest(top: Path) -> dict:
    with tarfile.open(top / "payload.tar.gz") as tar:
        return json.load(tar.extractfile("manifest.json"))


@pytest.fixture(scope="session")
def native(tmp_path_factory, pypi) -> tuple[Path, subprocess.CompletedProcess]:
    """(archive, build output) of an offline bundle for this machine and this CPython."""
    out = tmp_path_factory.mktemp("native") / "hs-native.tar.gz"
    res = build(out, "--platform", "native")
    assert res.returncode == 0, res.stderr
    return out, res


@pytest.mark.network
@pytest.mark.slow
def test_native_bundle_installs_in_a_fresh_venv_with_the_printed_pip_line(native, tmp_path):
    archive, res = native
    line = res.stdout.splitlines()[-1]
    top = VERSION_TOP.format(version="0.1.0")
    assert line == ("or into a venv of your own: pip install --no-index --find-links "
                    f"{top}/wheels 'heartsound[edge]'")
    stick = tmp_path / "stick"
    stick.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(stick)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=device_env())
    env = device_env(PATH=f"{venv}/bin:{os.environ['PATH']}", HEARTSOUND_HOME=str(tmp_path))
    pip = subprocess.run(["sh", "-c", line.split(": ", 1)[1]], cwd=stick, env=env,
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr

    probe = subprocess.run([str(venv / "bin/python"), "-c", "import numpy, ai_edge_litert, "
                            "edge, os; print(os.path.realpath(numpy.__file__)); "
                            "print(os.path.realpath(edge.__file__))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert all(p.startswith(f"{os.path.realpath(venv)}/lib/") for p in probe.stdout.split()), \
        probe.stdout + probe.stderr
    screen = [str(venv / "bin/heartsound"), "screen", "--json", "--no-log", str(EXAMPLE)]
    device = subprocess.run(screen, capture_output=True, text=True, env=env, timeout=120)
    host = subprocess.run([HEARTSOUND, *screen[1:]], capture_output=True, text=True, timeout=120)
    assert device.returncode == 0 == host.returncode, device.stderr + host.stderr
    got, want = json.loads(device.stdout), json.loads(host.stdout)
    for volatile in ("latency_ms", "time_utc"):
        got.pop(volatile), want.pop(volatile)
    assert got == want


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(not Path(SSHD).exists() or os.geteuid() != 0,
                    reason="needs Debian's openssh-server and root (CI runs both)")
def test_ssh_deploy_with_download_deps_installs_with_no_index(tmp_path, pypi):
    """The SSH path to a device with no network: the device's own platform, asked over SSH."""
    server = SshServer(tmp_path / "sshd")
    try:
        root = tmp_path / "device"
        res = subprocess.run(
            [HEARTSOUND, "deploy", "--host", server.address, "--key", str(server.client_key),
             "--known-hosts", str(server.known_hosts), "--root", str(root), "--remote-python",
             sys.executable, "--offline", "--download-deps"],
            capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    assert res.returncode == 0, res.stderr
    manifest = json.loads((root / "current/bundle/manifest.json").read_text())
    assert manifest["target"]["platforms"][0].endswith(os.uname().machine)
    assert {"numpy", "ai-edge-litert"} <= set(manifest["dependencies"])
    probe = subprocess.run([str(root / "current/bin/python"), "-c",
                            "import numpy, os; print(os.path.realpath(numpy.__file__))"],
                           capture_output=True, text=True, env=device_env())
    assert probe.stdout.startswith(os.path.realpath(root / "current") + "/lib/"), probe


def _evil_payload(path: Path) -> Path:
    info = tarfile.TarInfo("../../escape")
    info.size = 1
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.mark.network
@pytest.mark.slow
def test_install_sh_installs_the_native_bundle_and_refuses_a_bad_stick(native, tmp_path):
    archive, _ = native
    top = unpack(archive, tmp_path / "stick")
    root = tmp_path / "bedside"
    args = ["sh", str(top / "install.sh"), "--root", str(root), "--python", sys.executable]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, env=device_env())
    assert res.returncode == 0, res.stderr
    first = os.readlink(root / "current").removeprefix("releases/")
    assert install.RELEASE_NAME.match(first) and f"installed {first}" in res.stdout
    assert (root / "data").stat().st_mode & 0o777 == 0o700
    screen = subprocess.run([str(root / "current/bin/heartsound"), "screen", "--json",
                             "--no-log", str(EXAMPLE)], capture_output=True, text=True,
                            env=device_env())
    assert screen.returncode == 0 and json.loads(screen.stdout)["decision"], screen.stderr

    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\ncase \"$1\" in -V) echo Python 3.9.2;; *) exit 1;; esac\n")
    old.chmod(0o755)
    res = subprocess.run(args[:5] + [str(old)], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == ("install.sh: Python 3.9.2 is too old, heartsound needs "
                                  "Python 3.11+; install a newer one or pass --python PATH")

    def refused(expect: str) -> None:
        res = subprocess.run(args, capture_output=True, text=True, timeout=600,
                             env=device_env())
        assert res.returncode == 1 and expect in res.stderr, res.stderr
        assert f"stays on releases/{first}" in res.stderr and len(res.stderr.splitlines()) == 1
        assert sorted(p.name for p in (root / "releases").iterdir()) == [first]
        assert os.readlink(root / "current") == f"releases/{first}"

    numpy = next((top / "wheels").glob("numpy-*.whl"))
    good = numpy.read_bytes()
    numpy.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit on the stick
    refused(f"{numpy.relative_to(top)} differs from the bundle")
    numpy.unlink()
    refused(f"{os.path.realpath(numpy)} is missing")
    numpy.write_bytes(good)

    payload = top / "payload.tar.gz"
    real = payload.read_bytes()
    evil = _evil_payload(tmp_path / "evil.tar.gz")
    shutil.copy(evil, payload)
    (top / "payload.tar.gz.sha256").write_text(sha256_file(evil) + "  payload.tar.gz\n")
    refused("refusing to extract")
    assert not (root / "escape").exists() and not (root / "releases" / "escape").exists()
    payload.write_bytes(real[:100])  # damaged on the stick: refused by its sha256
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 1 and "sha256 differs" in res.stderr


def test_the_wheel_carries_no_module_left_over_in_build_lib(tmp_path):
    """A module a checkout no longer has, left in setuptools' build/lib by an older
    build, must not reach the device in the wheel."""
    import zipfile

    stale = REPO / "build" / "lib" / "edge" / "left_over_from_an_old_build.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("raise ImportError('stale')\n")
    try:
        wheel = build_wheel(tmp_path / "wheel")
    finally:
        stale.unlink(missing_ok=True)
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge/screening.py" in names
    assert not [n for n in names if "left_over_from_an_old_build" in n]


def test_a_second_install_from_the_stick_rolls_back_to_the_first(native, tmp_path):
    """install.sh keeps ROOT/history as a deploy does, so rollback (which reads it) goes
    from the second stick install to the first, and pruning spares both. The second,
    given no --[no-]system-site-packages, makes its venv as the first's (a flashed station
    takes PyAudio from the system)."""
    from edge.deploy.remote import previous_release

    archive, _ = native
    top = unpack(archive, tmp_path / "stick")
    root = tmp_path / "bedside"
    args = ["sh", str(top / "install.sh"), "--root", str(root), "--python", sys.executable]
    installed = []
    for extra in (["--system-site-packages"], []):
        res = subprocess.run(args + extra, capture_output=True, text=True, timeout=600,
                             env=device_env())
        assert res.returncode == 0, res.stderr
        installed.append(os.readlink(root / "current").removeprefix("releases/"))
        assert install.current_sees_system_site(root)
    history = (root / install.HISTORY).read_text().split()
    assert history == installed and installed[0] != installed[1]
    names = sorted(p.name for p in (root / "releases").iterdir())
    assert previous_release(history, names) == installed[0]
    assert not list(root.glob(".*.tmp"))


@pytest.mark.network
def test_default_bundle_carries_raspberry_pi_os_wheels_listed_with_their_hashes(tmp_path,
                                                                                pypi):
    out = tmp_path / "hs-pi.tar.gz"
    res = build(out)
    assert res.returncode == 0, res.stderr
    top_name = VERSION_TOP.format(version="0.1.0")
    assert res.stdout.splitlines()[1:] == [
        f"on the device: tar -xzf hs-pi.tar.gz && sh {top_name}/install.sh",
        "or into a venv of your own: pip install --no-index --find-links "
        f"{top_name}/wheels 'heartsound[edge]'"]
    top = unpack(out, tmp_path / "stick")
    manifest = payload_manifest(top)
    assert manifest["target"] == {"platforms": manylinux_platforms("aarch64", "2.36"),
                                  "implementation": "cp", "python_version": "3.11",
                                  "abi": "cp311"}
    deps = manifest["dependencies"]
    assert {"numpy", "ai-edge-litert"} <= set(deps)
    for name in ("numpy", "ai-edge-litert"):
        wheel = deps[name]["wheel"]
        assert "-cp311-cp311-manylinux" in wheel and wheel.endswith("_aarch64.whl"), wheel
    on_stick = sorted(f"wheels/{p.name}" for p in (top / "wheels").iterdir())
    assert on_stick == sorted([d["wheel"] for d in deps.values()] + [manifest["wheel"]])
    for rel in on_stick:
        assert sha256_file(top / rel) == manifest["files"][rel]["sha256"]
    for d in deps.values():
        assert d["sha256"] == manifest["files"][d["wheel"]]["sha256"]
    readme = (top / "README.txt").read_text()
    assert "CPython 3.11 on manylinux_2_36_aarch64 and older" in readme
    assert f"pip install --no-index --find-links {top_name}/wheels 'heartsound[edge]'" in readme


@pytest.mark.network
def test_a_bundle_for_a_newer_python_than_the_hosts(tmp_path, pypi):
    """The SD-card image's target (Debian trixie: CPython 3.13, glibc 2.41) from this
    3.11 host: numpy 2.4 needs Python 3.12+, which pip's install check measured against
    the host's Python until resolve_wheels skipped it for another Python."""
    out = tmp_path / "hs-trixie.tar.gz"
    res = build(out, "--platform", "aarch64:2.41", "--python-version", "3.13")
    assert res.returncode == 0, res.stderr
    deps = payload_manifest(unpack(out, tmp_path / "stick"))["dependencies"]
    for name in ("numpy", "ai-edge-litert"):
        assert "-cp313-cp313-manylinux" in deps[name]["wheel"], deps[name]["wheel"]


@pytest.mark.network
def test_a_target_without_a_wheel_is_one_line_naming_the_package(tmp_path, pypi):
    out = tmp_path / "hs-musl.tar.gz"
    res = build(out, "--platform", "musllinux_1_2_aarch64")
    assert res.returncode == 8
    last = res.stderr.strip().splitlines()[-1]
    assert last == ("heartsound: no wheel of ai-edge-litert>=2.3.0 for CPython 3.11 on "
                    "musllinux_1_2_aarch64 (pip download --only-binary=:all: --platform "
                    "musllinux_1_2_aarch64 --implementation cp --python-version 3.11 --abi "
                    "cp311 -d wheels 'ai-edge-litert>=2.3.0' finds none); choose a target it "
                    "has wheels for (--platform, --python-version)")
    assert "Traceback" not in res.stderr and not out.exists()


@pytest.mark.network
def test_build_refuses_dependency_wheels_that_do_not_resolve(tmp_path, pypi):
    """The build-time check: pip must resolve heartsound[edge] from the bundle's wheels."""
    deps = download_dependency_wheels(tmp_path / "deps", device_requirements(), WheelTarget())
    litert = [p for p in deps if p.name.startswith("ai_edge_litert-")]
    assert litert, [p.name for p in deps]
    wheel = build_wheel(tmp_path / "wheel")
    with pytest.raises(DownloadError, match=r"no wheel of ai-edge-litert>=2\.3\.0 for "
                       r"CPython 3\.\d+ on this machine's platform .* there; build the bundle"):
        build_bundle(tmp_path / "bundle", wheel=wheel, target=WheelTarget(),
                     dependency_wheels=[p for p in deps if p not in litert])


def test_a_bundle_without_dependency_wheels_makes_no_offline_bundle(tmp_path):
    bundle = build_bundle(tmp_path / "bundle", wheel=build_wheel(tmp_path / "wheel"))
    out = tmp_path / "hs.tar.gz"
    res = build(out, "--bundle", str(bundle.path))
    assert res.returncode == 2 and not out.exists()
    assert res.stderr.strip() == (f"heartsound: {bundle.path}: this bundle carries no "
                                  "dependency wheels, so it cannot install offline; build the "
                                  "offline bundle without --bundle (or with --bundle "
                                  "NEW_FOLDER)")


@pytest.mark.parametrize(("platform", "python", "tags", "want_python"), [
    (None, None, manylinux_platforms("aarch64", "2.36"), "3.11"),
    ("manylinux_2_17_aarch64", "3.11", manylinux_platforms("aarch64", "2.17"), "3.11"),
    ("manylinux2014_aarch64", None, manylinux_platforms("aarch64", "2.17"), "3.11"),
    ("aarch64:2.36", "3.12", manylinux_platforms("aarch64", "2.36"), "3.12"),
    ("musllinux_1_2_aarch64", None, ["musllinux_1_2_aarch64"], "3.11"),
    ("native", None, [], f"{sys.version_info[0]}.{sys.version_info[1]}"),
])
def test_parse_target(platform, python, tags, want_python):
    target = parse_target(platform, python)
    assert list(target.platforms) == tags and target.python == want_python
    flags = target.pip_args()
    if tags:
        assert flags[-6:] == ["--implementation", "cp", "--python-version", want_python,
                              "--abi", "cp" + want_python.replace(".", "")]
    else:
        assert flags == []


@pytest.mark.parametrize(("platform", "python"), [("pi", None), ("native", "3")])
def test_parse_target_refuses_what_pip_cannot_take(platform, python):
    with pytest.raises(UsageError, match="--p"):
        parse_target(platform, python)


def test_installer_names_pips_error_line_not_its_last_line():
    """pip prints INFO lines after its ERROR: the one-line message must carry the ERROR."""
    script = ("import sys; print('ERROR: No matching distribution found for numpy>=1.26', "
              "file=sys.stderr); print('INFO: pip is looking at multiple versions of "
              "heartsound[edge]'); sys.exit(1)")
    with pytest.raises(InstallError) as err:
        install._run("installing dependencies", [sys.executable, "-c", script])
    assert str(err.value) == ("installing dependencies: ERROR: No matching distribution "
                              "found for numpy>=1.26")


def test_the_venv_mode_is_read_from_real_venvs(tmp_path):
    """`current_sees_system_site` against what `python -m venv` writes, both ways, and a
    root with no release."""
    root = tmp_path / "root"
    assert not install.current_sees_system_site(root)
    for flag, want in (([], False), (["--system-site-packages"], True)):
        venv = tmp_path / f"venv{len(flag)}"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", *flag, str(venv)],
                       check=True)
        root.mkdir(exist_ok=True)
        (root / "current").unlink(missing_ok=True)
        (root / "current").symlink_to(venv)
        assert install.current_sees_system_site(root) is want
