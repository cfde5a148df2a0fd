"""`heartsound image build` refuses early, in one line, what cannot work (real processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def heartsound(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_help_says_what_the_image_is_and_how_long_it_takes():
    out = " ".join(heartsound("image", "build", "--help").stdout.split())
    assert "Raspberry Pi 3, 4 and 5" in out and "minutes" in out and "heartsound.toml" in out


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_without_mmdebstrap_it_says_run_setup(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with everything but mmdebstrap
    bin_dir.mkdir()
    for tool in ("mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk"):
        (bin_dir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True,
                                                   text=True).stdout.strip())
    env = dict(os.environ, PATH=str(bin_dir))
    line = one_line_error(heartsound("image", "build", "--out", str(tmp_path / "s.img"),
                                     env=env))
    assert "no mmdebstrap" in line and "scripts/setup.sh" in line
    assert not (tmp_path / "s.img").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_an_output_name_that_is_no_image_is_refused(tmp_path):
    line = one_line_error(heartsound("image", "build", "--out", str(tmp_path / "s.tar.gz")))
    assert "ending in .img" in line


def test_not_root_is_refused(tmp_path):
    """As a user without root (setpriv to nobody) the build stops before any download.

    nobody imports heartsound from a world-readable copy of `edge`: the checkout may lie
    in a folder only root can enter (a CI clone in a mode-700 temporary folder)."""
    if os.geteuid() != 0:
        proc = heartsound("image", "build", "--out", str(tmp_path / "s.img"))
    else:
        readable = Path(tempfile.mkdtemp(prefix="heartsound-nobody-"))
        try:
            readable.chmod(0o755)
            shutil.copytree(REPO / "edge", readable / "edge",
                            ignore=shutil.ignore_patterns("__pycache__"))
            proc = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())",
                 "image", "build", "--out", "/tmp/x.img"],
                capture_output=True, text=True, timeout=120, cwd="/",
                env=dict(os.environ, HOME="/tmp", PYTHONPATH=str(readable)))
        finally:
            shutil.rmtree(readable, ignore_errors=True)
        if "Permission denied" in proc.stderr:
            pytest.skip("this Python is not readable by nobody")
    assert "run as root" in one_line_error(proc)


def test_image_without_subcommand_is_a_usage_error():
    proc = heartsound("image")
    assert proc.returncode == 2 and "build" in proc.stderr


def test_the_image_builds_the_same_heartsound_wheel_twice(tmp_path):
    """The manifest's heartsound wheel hash is the same for the same sources (pip wheel
    stamps the zip with SOURCE_DATE_EPOCH, else with the time of the build)."""
    from edge.deploy.bundle import build_wheel, sha256_file
    from edge.image.build import source_date_epoch

    hashes = []
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        with source_date_epoch():
            hashes.append(sha256_file(build_wheel(tmp_path / str(n))))
        time.sleep(1.1)  # zip times have 2 s resolution: cross a boundary at least once
    assert hashes[0] == hashes[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_a_mirror_that_is_no_url_is_refused(tmp_path):
    line = one_line_error(heartsound("image", "build", "--out", str(tmp_path / "s.img"),
                                     "--mirror", "deb.example.org/debian"))
    assert "--mirror deb.example.org/debian" in line and "http://" in line
    assert not (tmp_path / "s.img").exists()


def test_a_clinics_mirror_serves_both_suites(tmp_path):
    """--mirror names where mmdebstrap takes trixie and the kernel's backports from, and
    the manifest records it (what the boot test's image was built with is the default)."""
    from edge.image.build import DEFAULT_MIRROR, SUITE, apt_sources, mmdebstrap_command

    mirror = "http://debian.clinic.example/debian/"
    cmd = mmdebstrap_command(tmp_path / "root", tmp_path / "cache", tmp_path / "stage" / "b",
                             mirror)
    assert cmd[-2:] == [f"deb http://debian.clinic.example/debian {SUITE} main "
                        "non-free-firmware",
                        f"deb http://debian.clinic.example/debian {SUITE}-backports main"]
    assert apt_sources(DEFAULT_MIRROR)[0].startswith("deb http://deb.debian.org/debian ")


def test_the_image_cache_is_keyed_by_the_inputs(tmp_path):
    """A bundle's files, the mirror and the build's own code make the key; a cached image
    comes back byte for byte with its manifest, and only the newest stays."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (scripts/setup.sh)")
    from edge.image import build as b

    bundle = {"files": {"wheels/heartsound-0.1.0-py3-none-any.whl": {"sha256": "1" * 64},
                        "model/m.tflite": {"sha256": "2" * 64}}, "target": {"python": "3.13"}}
    key = b.inputs_key(bundle, b.DEFAULT_MIRROR)
    assert key == b.inputs_key(json_copy(bundle), b.DEFAULT_MIRROR)
    other_model = json_copy(bundle)
    other_model["files"]["model/m.tflite"]["sha256"] = "3" * 64
    assert len({key, b.inputs_key(other_model, b.DEFAULT_MIRROR),
                b.inputs_key(bundle, "http://mirror.example/debian")}) == 3

    images, out = tmp_path / "cache" / "images", tmp_path / "station.img"
    assert b.from_cache(images, key, out) is None and not out.exists()
    with open(out, "wb") as f:  # sparse, as an image is
        f.seek(8 << 20)
        f.write(b"root")
    out.with_name("station.img.manifest.json").write_text('{"debian_packages": {}}\n')
    b.into_cache(images, key, out)
    again = tmp_path / "again.img"
    assert b.from_cache(images, key, again) is not None
    assert again.read_bytes() == out.read_bytes()
    assert (tmp_path / "again.img.manifest.json").read_text() == '{"debian_packages": {}}\n'
    time.sleep(0.01)
    b.into_cache(images, "newer", out)
    assert sorted(p.name for p in images.iterdir()) == ["newer.img", "newer.img.manifest.json"]


def json_copy(value):
    import json

    return json.loads(json.dumps(value))


def test_the_build_log_is_written_as_the_tool_runs(tmp_path):
    """`tail -f station.img.build.log` shows mmdebstrap's lines as they come, not at the
    end: a line is in the log while the tool is still running."""
    import threading

    from edge.image.build import run_step

    log = tmp_path / "build.log"
    cmd = ["sh", "-c", "echo 'I: first step'; sleep 3; echo 'I: second step'"]
    worker = threading.Thread(target=run_step, args=("a step", cmd), kwargs={"log": log})
    worker.start()
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline and "I: first step" not in (
            log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    assert worker.is_alive() and "I: first step" in log.read_text()
    worker.join()
    assert log.read_text().splitlines() == ["I: first step", "I: second step"]
