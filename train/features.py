"""Features for training: the device's own fixed-point front end, cached on disk.

Training never computes a feature the device would not: every matrix here comes from
:func:`edge.audio.read_wav` (integer resampler) and :func:`edge.mfcc.mfcc` (fixed point).
Augmented variants (:class:`Variant`: speed, gain, added noise) change the *audio* and then
run the same front end, so an augmented window is something a stethoscope could produce.

The cache stores the frame-level matrix ``(n_frames, n_ceps)`` int16 of one recording and
one variant, in ``<cache>/spec-<sha256(spec JSON)[:16]>/<file sha256[:2]>/<key>.npy``.
The key hashes the file's content (not its path: moving the data keeps the cache valid)
and the variant actually applied, so a second run with the same seed recomputes nothing,
and any change to the spec lands in a different folder.

Windows are cut later (:func:`recording_windows`), so a random time shift per epoch costs
no front-end work.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge.audio import read_wav
from edge.errors import DataError
from edge.mfcc import fill_window, mfcc, windows
from edge.resample import resample
from edge.spec import FeatureSpec

CACHE_ENV = "HEARTSOUND_CACHE"
DEFAULT_WORKERS = 2
HASH_BLOCK = 1 << 20
INT16_MIN, INT16_MAX = -32768, 32767
NOISE_SEED_SALT = "noise-offset"
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Variant:
    """How a recording's audio is altered before the front end (identity by default).

    ``speed_rate_hz``: the spec-rate audio is resampled to this rate and then *read as*
    the spec rate, so 2100 plays 5 % slower (heart rate and pitch 5 % lower).
    ``gain_db`` scales the samples (saturating). ``noise`` is a recording whose audio is
    added at ``snr_db`` (signal RMS over noise RMS), starting ``noise_offset`` samples in
    and looping when shorter than the recording.
    """

    speed_rate_hz: int = 0
    gain_db: float = 0.0
    noise: str = ""
    noise_sha: str = ""
    noise_offset: int = 0
    snr_db: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self == Variant()

    def key(self) -> str:
        """Stable text naming the transformation (the noise by content, not by path)."""
        if self.is_identity:
            return "orig"
        data = asdict(self)
        data.pop("noise")
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


IDENTITY = Variant()


@dataclass
class ExtractionStats:
    """What one :func:`extract_all` call did: the cache test counts ``computed``."""

    computed: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """``$HEARTSOUND_CACHE`` or ``~/.cache/heartsound/features``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "heartsound" / "features"


def spec_hash(spec: FeatureSpec) -> str:
    """First 16 hex digits of sha256 of the canonical spec JSON."""
    return hashlib.sha256(spec.to_json().encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) inside this process."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
        _SHA_MEMO[memo_key] = digest.hexdigest()
    return _SHA_MEMO[memo_key]


class FeatureCache:
    """Frame-level features on disk, one .npy per (spec, file content, variant)."""

    def __init__(self, root: Path, spec: FeatureSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.folder = self.root / f"spec-{spec_hash(spec)}"

    def path_for(self, sha: str, variant: Variant) -> Path:
        return self.folder / sha[:2] / f"{sha}-{variant.key()}.npy"

    def load(self, sha: str, variant: Variant) -> np.ndarray | None:
        path = self.path_for(sha, variant)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a torn write from a killed run: recompute it

    def store(self, sha: str, variant: Variant, feats: np.ndarray) -> None:
        """Write atomically (temp file + rename) so a killed run leaves no half file."""
        path = self.path_for(sha, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "spec.json").exists():
            _atomic_write(self.folder / "spec.json",
                          lambda h: h.write((self.spec.to_json() + "\n").encode()))
        _atomic_write(path, lambda h: np.save(h, feats, allow_pickle=False))


def _atomic_write(path: Path, write) -> None:
    """Temp file in the same folder, then rename: concurrent writers (sweep trials sharing
    the cache) and readers see the old file or the whole new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------ computing


def _mix_noise(pcm: np.ndarray, noise: np.ndarray, offset: int, snr_db: float) -> np.ndarray:
    if noise.size == 0 or pcm.size == 0:
        return pcm.astype(np.float64)
    idx = (offset + np.arange(pcm.size)) % noise.size
    seg = noise[idx].astype(np.float64)
    sig = pcm.astype(np.float64)
    p_sig = float(np.mean(sig**2)) + 1.0
    p_noise = float(np.mean(seg**2)) + 1.0
    scale = np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
    return sig + scale * seg


def apply_variant(pcm: np.ndarray, variant: Variant, spec: FeatureSpec) -> np.ndarray:
    """Spec-rate int16 audio altered as ``variant`` says (host-side float mixing)."""
    out = pcm
    if variant.speed_rate_hz and variant.speed_rate_hz != spec.sample_rate_hz:
        out = resample(out, spec.sample_rate_hz, variant.speed_rate_hz)
    mixed = out.astype(np.float64)
    if variant.noise:
        noise = read_wav(variant.noise, spec.sample_rate_hz)
        mixed = _mix_noise(out, noise, variant.noise_offset, variant.snr_db)
    if variant.gain_db:
        mixed = mixed * 10 ** (variant.gain_db / 20)
    return np.clip(np.rint(mixed), INT16_MIN, INT16_MAX).astype(np.int16)


def compute_features(path: str | Path, spec: FeatureSpec, variant: Variant = IDENTITY
                     ) -> np.ndarray:
    """(n_frames, n_ceps) int16: read, alter, fill one window as the device does, MFCC."""
    pcm = read_wav(path, spec.sample_rate_hz)
    if not variant.is_identity:
        pcm = apply_variant(pcm, variant, spec)
    return mfcc(fill_window(pcm, spec), spec)


def _worker(job: tuple[str, str, Variant, FeatureSpec]) -> tuple[str, np.ndarray | str]:
    path, sha, variant, spec = job
    try:
        return sha, compute_features(path, spec, variant)
    except Exception as exc:  # noqa: BLE001 - reported with the file name below
        return sha, f"{type(exc).__name__}: {exc}"


def extract_all(
    items: Sequence[tuple[Path, Variant]],
    spec: FeatureSpec,
    cache: FeatureCache | None,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    desc: str = "features",
) -> tuple[list[np.ndarray], ExtractionStats]:
    """Features of each (file, variant), from the cache when present, else computed.

    Misses are computed in a pool of ``workers`` processes (1: in this process) with a
    progress bar; a file that cannot be read raises DataError naming it.
    """
    stats = ExtractionStats()
    shas = [file_sha256(Path(p)) for p, _ in items]
    out: list[np.ndarray | None] = [None] * len(items)
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (sha, (_path, variant)) in enumerate(zip(shas, items, strict=True)):
        hit = cache.load(sha, variant) if cache is not None else None
        if hit is not None:
            out[i] = hit
            stats.cached += 1
        else:
            todo.setdefault((sha, variant.key()), []).append(i)
    jobs = [(str(items[idx[0]][0]), sha, items[idx[0]][1], spec)
            for (sha, _), idx in todo.items()]
    for job, result in zip(jobs, _run_jobs(jobs, workers, progress, desc), strict=True):
        path, sha, variant, _ = job
        if isinstance(result, str):
            raise DataError(f"{path}: cannot compute features ({result}); check or remove "
                            "the file")
        if cache is not None:
            cache.store(sha, variant, result)
        stats.computed += 1
        for i in todo[sha, variant.key()]:
            out[i] = result
    return out, stats  # type: ignore[return-value]


def _run_jobs(jobs: list, workers: int, progress: bool, desc: str):
    """Results in job order; a pool only when it pays for its start-up."""
    bar = _progress(len(jobs), progress, desc)
    try:
        if workers <= 1 or len(jobs) < 2 * workers:
            for job in jobs:
                yield _worker(job)[1]
                bar.update(1)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _, result in pool.map(_worker, jobs, chunksize=4):
                yield result
                bar.update(1)
    finally:
        bar.close()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled or total == 0,
                leave=False, dynamic_ncols=True)


# -------------------------------------------------------------------------- windows


def recording_windows(feats: np.ndarray, spec: FeatureSpec, offset: int = 0) -> np.ndarray:
    """(n_windows, frames_per_window, n_ceps) int16 via edge.mfcc.windows, from frame
    ``offset`` on (the per-epoch time shift; a per-recording normalisation still counts
    from the first frame, as the device does); an offset that would leave no window is 0."""
    if feats.shape[0] - offset < spec.frames_per_window:
        offset = 0
    return windows(np.ascontiguousarray(feats), spec, offset)
