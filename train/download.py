"""Fetch and unpack the public PhysioNet/CinC 2016 training archive, safely.

The archive is a few hundred megabytes over links that drop, so a download resumes
where it stopped (HTTP Range on a ``.part`` file), survives servers that ignore Range
(it starts over), is checked against a sha256 when one is given, and appears under its
final name only when complete (fsync, then rename). Unpacking refuses entries that
would land outside the destination (``..``, absolute names, symbolic links) and
builds the tree in a hidden temporary folder first, so a half-unpacked data set never
looks like a real one to ``load_records``.

Standard library only (urllib): no extra dependency for a one-off fetch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from edge.errors import DownloadError
from train.datasets import detect_format

DEFAULT_URL = "https://physionet.org/files/challenge-2016/1.0.0/training.zip"
PHYSIONET_2016_URL = DEFAULT_URL
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 16
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_ATTEMPTS = 3  # one try plus two resumes within one call
HASH_CHUNK_BYTES = 1 << 20
USER_AGENT = "heartsound-downloader"
HTTP_PARTIAL = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
CONTENT_RANGE_TOTAL = re.compile(r"bytes\s+\*/(\d+)")
EXTRACT_PREFIX = ".extract-"
SEARCH_DEPTH = 2  # how deep below the destination extract() looks for a data set


class _Interrupted(Exception):
    """The body stopped early: worth resuming, not worth bothering the user yet."""


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    progress: bool = True,
    attempts: int = DEFAULT_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` (a file, or a folder to hold the URL's file name).

    A ``dest.part`` left by an earlier cut run is resumed. An existing ``dest`` is
    returned as is when no checksum is asked or it matches. Returns the final path.
    """
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download '{url}': only http and https URLs are supported")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / (PurePosixPath(urlparse(url).path).name or "download")
    expected = sha256.strip().lower() if sha256 else None
    if dest.is_file() and (expected is None or file_sha256(dest) == expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    _fetch_with_resume(url, part, progress, max(1, attempts), timeout)
    if expected is not None:
        actual = file_sha256(part)
        if actual != expected:
            part.unlink()
            raise DownloadError(
                f"{url}: sha256 {actual} is not the expected {expected}; the download was "
                "removed: check the URL and the checksum, then run again"
            )
    os.replace(part, dest)
    _fsync_folder(dest.parent)
    return dest


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _fetch_with_resume(url: str, part: Path, progress: bool, attempts: int, timeout: float):
    reason = ""
    for _ in range(attempts):
        try:
            _fetch(url, part, progress, timeout)
            return
        except _Interrupted as exc:
            reason = str(exc)
    raise DownloadError(
        f"download of {url} was cut {attempts} time(s) ({reason}); {part} is kept: "
        "run the same command again to resume"
    )


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """One HTTP request appending to ``part``; raises _Interrupted when cut short."""
    offset = part.stat().st_size if part.is_file() else 0
    request = Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as exc:
        if exc.code == HTTP_RANGE_NOT_SATISFIABLE and offset:
            if _range_total(exc.headers.get("Content-Range", "")) == offset:
                return  # the part file already holds the whole body
            part.unlink()
            raise _Interrupted("the server refused to resume; starting over") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}: check the URL") from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}): check the network") from None
    with response:
        offset = _resume_offset(response, offset)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        _copy_body(response, part, offset, total, progress)


def _resume_offset(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body starts: ``offset`` if the server honoured Range, else 0."""
    if not offset or response.status != HTTP_PARTIAL:
        return 0  # a 200 answer to a Range request: the server ignored it
    match = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        raise _Interrupted(f"server answered a different range ({match and match.group(0)})")
    return offset


def _copy_body(response, part: Path, offset: int, total: int | None, progress: bool) -> None:
    bar = _progress_bar(total, offset, part.name.removesuffix(PART_SUFFIX), progress)
    written = offset
    try:
        with part.open("r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as exc:
                    raise _Interrupted(f"connection lost after {written} bytes: {exc!r}") from None
                if not chunk:
                    break
                _write(out, chunk, part)
                written += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    finally:
        if bar is not None:
            bar.close()
    if total is not None and written != total:
        raise _Interrupted(f"got {written} of {total} bytes")


def _write(out, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror}; free some space") from None


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool):
    """A tqdm bar when tqdm is installed and progress is wanted, else None (silent)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name)


def _range_total(content_range: str) -> int | None:
    match = CONTENT_RANGE_TOTAL.match(content_range)
    return int(match.group(1)) if match else None


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ unzip


def extract(zip_path: Path, dest: Path) -> Path:
    """Unpack ``zip_path`` into ``dest``; return the folder to pass as ``--data``.

    Every entry is checked before anything is written. The tree is built in a hidden
    folder inside ``dest`` and each top-level entry is then renamed into place, so no
    half-unpacked folder ever carries a real name. An existing top-level entry is not
    overwritten (DownloadError): remove it to unpack again.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(
            f"{zip_path} is not a readable zip archive ({exc}): delete it and download again"
        ) from None
    with archive:
        members = archive.infolist()
        for info in members:
            _check_member(zip_path, info)
        tops = sorted({PurePosixPath(info.filename).parts[0] for info in members})
        dest.mkdir(parents=True, exist_ok=True)
        for top in tops:
            if (dest / top).exists():
                raise DownloadError(
                    f"{dest / top} already exists: use it as it is, or remove it to unpack "
                    f"{zip_path.name} again"
                )
        staging = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX, dir=dest))
        try:
            for info in members:
                _extract_member(archive, info, staging, zip_path)
            for top in tops:
                os.replace(staging / top, dest / top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return find_data_root(dest, tops)


def _check_member(zip_path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    reason = _unsafe_reason(name, info)
    if reason:
        raise DownloadError(f"{zip_path}: refusing entry '{name}': {reason}; the archive is unsafe")


def _unsafe_reason(name: str, info: zipfile.ZipInfo) -> str | None:
    if not name or "\x00" in name:
        return "empty or NUL in its name"
    if "\\" in name:
        return "a backslash in its name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' leads outside the destination"
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "not a regular file or folder"
    return None


def _extract_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path, zip_path: Path
) -> None:
    target = staging.joinpath(*PurePosixPath(info.filename).parts)
    if not target.resolve().is_relative_to(staging.resolve()):
        raise DownloadError(f"{zip_path}: refusing entry '{info.filename}': outside the folder")
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.open(info) as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DownloadError(
            f"{zip_path}: entry '{info.filename}' is corrupt ({exc}): delete the archive "
            "and download again"
        ) from None


def find_data_root(dest: Path, tops: list[str] | None = None) -> Path:
    """The folder under ``dest`` that ``load_records`` reads: a PhysioNet root or a
    PASCAL folder, looked for among the unpacked entries down to two levels."""
    candidates = [dest / t for t in tops] if tops is not None else [dest]
    for _ in range(SEARCH_DEPTH):
        for folder in candidates:
            kind = detect_format(folder) if folder.is_dir() else None
            if kind == "physionet-folder" and folder.name.startswith("training-"):
                return folder.parent
            if kind is not None:
                return folder
        candidates = sorted(sub for c in candidates if c.is_dir() for sub in c.iterdir())
    return dest
