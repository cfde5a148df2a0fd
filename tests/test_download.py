"""The downloader against a local HTTP server that serves a zip of real recordings.

The server (127.0.0.1, a free port) supports Range, can cut the connection halfway
through its first answer, and can ignore Range like some servers do. Nothing here
touches the internet.
"""

from __future__ import annotations

import hashlib
import io
import stat
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge.errors import DownloadError
from train.datasets import Recording, load_records
from train.download import PART_SUFFIX, download, extract

ARCHIVE_NAME = "training.zip"
PER_FOLDER = 3  # real recordings per training-x folder in the test archive
FOLDERS = ("training-b", "training-d")


class _Server(ThreadingHTTPServer):
    """Serves one payload; knobs say how to misbehave; records what it was asked."""

    daemon_threads = True
    payload = b""
    cut_after: int | None = None  # close the first answer after this many body bytes
    honour_range = True
    ranges: list[str | None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        server = self.server
        if self.path != f"/{ARCHIVE_NAME}":
            self.send_error(404)
            return
        asked = self.headers.get("Range")
        first = not server.ranges
        server.ranges.append(asked)
        body, start = server.payload, 0
        if asked and server.honour_range:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if first and server.cut_after is not None:
            self.wfile.write(body[start : start + server.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def source_records(data_root: Path) -> list[Recording]:
    """A few real recordings of two PhysioNet databases, both labels in each."""
    chosen = []
    for folder in FOLDERS:
        records = load_records([data_root / "physionet2016" / folder])
        normal = [r for r in records if r.label == "normal"]
        abnormal = [r for r in records if r.label == "abnormal"]
        chosen += sorted([*normal[:2], *abnormal[: PER_FOLDER - 2]], key=lambda r: r.path)
    return chosen


@pytest.fixture(scope="module")
def archive(source_records: list[Recording]) -> bytes:
    """training.zip in the challenge layout, built from the real files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in FOLDERS:
            mine = [r for r in source_records if r.path.parent.name == folder]
            codes = {"normal": "-1", "abnormal": "1"}
            reference = "".join(f"{r.path.stem},{codes[r.label]}\n" for r in mine)
            zf.writestr(f"training/{folder}/REFERENCE.csv", reference)
            for r in mine:
                for suffix in (".hea", ".wav"):
                    real = r.path.with_suffix(suffix)
                    zf.write(real, f"training/{folder}/{real.name}")
    return buffer.getvalue()


@pytest.fixture
def server(archive: bytes) -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.payload = archive
    httpd.ranges = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _url(server: _Server, name: str = ARCHIVE_NAME) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _essentials(records: list[Recording]) -> list[tuple]:
    return sorted(
        (r.path.name, r.label, r.source, r.group, r.sample_rate, r.seconds, r.noisy)
        for r in records
    )


def test_download_check_extract_load(
    server: _Server, archive: bytes, tmp_path: Path, source_records: list[Recording]
) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    path = download(_url(server), dest / ARCHIVE_NAME, _sha(archive), progress=True)
    assert path.read_bytes() == archive
    assert not (dest / (ARCHIVE_NAME + PART_SUFFIX)).exists()
    assert server.ranges == [None]
    root = extract(path, dest)
    assert root == dest / "training"
    loaded = load_records([root])
    assert _essentials(loaded) == _essentials(source_records)
    for record in loaded:
        original = next(r for r in source_records if r.path.name == record.path.name)
        assert record.path.read_bytes() == original.path.read_bytes()
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract-")]
    # a second run finds the finished file and asks nothing; unpacking again is refused
    assert download(_url(server), dest / ARCHIVE_NAME, _sha(archive)) == path
    assert server.ranges == [None]
    with pytest.raises(DownloadError, match="already exists"):
        extract(path, dest)


def test_resume_after_a_cut(server: _Server, archive: bytes, tmp_path: Path) -> None:
    half = len(archive) // 2
    server.cut_after = half
    target = tmp_path / ARCHIVE_NAME
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download(_url(server), target, _sha(archive), progress=False, attempts=1)
    part = tmp_path / (ARCHIVE_NAME + PART_SUFFIX)
    assert part.stat().st_size == half and not target.exists()
    download(_url(server), target, _sha(archive), progress=False)
    assert server.ranges == [None, f"bytes={half}-"]
    assert target.read_bytes() == archive and not part.exists()


def test_cut_is_resumed_within_one_call(server: _Server, archive: bytes, tmp_path: Path):
    server.cut_after = len(archive) // 3
    target = download(_url(server), tmp_path / ARCHIVE_NAME, _sha(archive), progress=False)
    assert server.ranges == [None, f"bytes={len(archive) // 3}-"]
    assert target.read_bytes() == archive


def test_server_ignoring_range_restarts(server: _Server, archive: bytes, tmp_path: Path):
    server.honour_range = False
    part = tmp_path / (ARCHIVE_NAME + PART_SUFFIX)
    part.write_bytes(b"\xff" * (len(archive) // 2))  # a stale half that must not survive
    target = download(_url(server), tmp_path / ARCHIVE_NAME, _sha(archive), progress=False)
    assert server.ranges == [f"bytes={len(archive) // 2}-"]
    assert target.read_bytes() == archive


def test_wrong_checksum_removes_the_file(server: _Server, tmp_path: Path) -> None:
    target = tmp_path / ARCHIVE_NAME
    with pytest.raises(DownloadError, match="sha256 .* is not the expected 0{64}"):
        download(_url(server), target, "0" * 64, progress=False)
    assert not target.exists()
    assert not (tmp_path / (ARCHIVE_NAME + PART_SUFFIX)).exists()


def test_bad_urls(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(_url(server, "nothing.zip"), tmp_path / "x.zip", progress=False)
    with pytest.raises(DownloadError, match="only http and https"):
        download("file:///etc/passwd", tmp_path / "y", progress=False)


def _zip_with(tmp_path: Path, name: str, *, symlink: bool = False) -> Path:
    path = tmp_path / f"evil-{abs(hash(name))}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("training/training-x/REFERENCE.csv", "x0001,1\n")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if symlink else "owned")
    return path


@pytest.mark.parametrize(
    ("entry", "symlink", "reason"),
    [
        ("../evil", False, "'..' leads outside"),
        ("training/../../evil", False, "'..' leads outside"),
        ("/tmp/evil", False, "an absolute path"),
        ("training/link", True, "a symbolic link"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, entry: str, symlink: bool, reason: str):
    archive = _zip_with(tmp_path, entry, symlink=symlink)
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match=reason):
        extract(archive, dest)
    assert not (tmp_path / "evil").exists()
    assert not dest.exists() or not any(dest.iterdir())


def test_corrupt_archive(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match="not a readable zip archive"):
        extract(broken, tmp_path / "out")
