"""Fixed-point MFCC front end: error, speed and Cortex-M4 size, on every PASCAL frame.

Prints markdown tables:

1. Error against float64 on every frame of every recording in ../shared/data/pascal
   (resampled to the spec rate by edge.audio.read_wav): SNR in dB per recording (mean and
   worst), the same without c0, and the max abs error in log2-power units, for
   edge.mfcc and for CMSIS-DSP's arm_mfcc_q15 / arm_mfcc_q31 (arm_mfcc_f32 as a check of
   the harness) fed the same pre-emphasised frames, the same mel matrix and DCT.
   CMSIS computes ln of mel sums of |X| (not log2 of |X|^2), so each is measured against
   a float64 reference of its own convention; SNR without c0 does not depend on that
   convention (c0 carries the level and the units' offset), and CMSIS errors are
   converted to log2-power units (x 2/ln 2) for the max column.
2. Speed on one core: frames/s of the Python batch front end, the float64 reference and
   the C front end (gcc -O2, streaming driver), and the time for a 30 s recording.
3. Cortex-M4 size of firmware_bridge/c/hs_mfcc.c (arm-none-eabi-gcc -mcpu=cortex-m4
   -mthumb -Os): flash = .text + .rodata, RAM = .data + .bss + the caller's stream state
   + the deepest stack (-fstack-usage).
4. (--spectra) energy below 200 / 800 Hz per source, the numbers behind FeatureSpec.

    python3 bench/bench_frontend.py [--limit N] [--spectra]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.audio import read_wav  # noqa: E402
from edge.mfcc import mfcc  # noqa: E402
from edge.mfcc_reference import mfcc_reference  # noqa: E402
from edge.spec import DEFAULT_SPEC, FeatureSpec  # noqa: E402
from edge.tables import dct_matrix_f64, mel_matrix_f64, tables_for, window_f64  # noqa: E402
from firmware_bridge.tables_header import DEFAULT_HEADER  # noqa: E402

C_DIR = DEFAULT_HEADER.parent
CMSIS_LOG_OFFSET = 1e-6        # arm_mfcc_f32 adds this before the log
LN_MAG_TO_LOG2_POW = 2 / math.log(2)


def data_root() -> Path:
    """As tests/conftest.py: $HEARTSOUND_DATA's first entry's parent, else ../shared/data."""
    entries = [p for p in os.environ.get("HEARTSOUND_DATA", "").split(os.pathsep) if p.strip()]
    if entries:
        return Path(entries[0]).expanduser().resolve().parent
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """SNR in dB; NaN when the reference is all zero (a digitally silent recording)."""
    err = np.asarray(got, dtype=np.float64) - ref
    signal = float((ref**2).sum())
    if signal == 0:
        return math.nan
    return 10 * math.log10(signal / max(float((err**2).sum()), 1e-30))


# ---- CMSIS-DSP on the same frames ------------------------------------------------------
class Cmsis:
    """arm_mfcc_{q15,q31,f32} set up with the spec's window, mel matrix and DCT."""

    def __init__(self, spec: FeatureSpec) -> None:
        import cmsisdsp as dsp

        if spec.frame_length != spec.n_fft:
            raise SystemExit("CMSIS-DSP's MFCC needs frame_length == n_fft")
        self.dsp, self.spec = dsp, spec
        tab = tables_for(spec)
        self.mel, self.dct, self.win = mel_matrix_f64(spec), dct_matrix_f64(spec), window_f64(spec)
        pos, length = tab.mel_start.astype(np.uint32), tab.mel_len.astype(np.uint32)
        packed = np.concatenate([self.mel[b, p:p + n] for b, (p, n) in
                                 enumerate(zip(pos, length, strict=True))])
        args = (spec.n_fft, spec.n_mels, spec.n_ceps)
        self.q15 = dsp.arm_mfcc_instance_q15()
        dsp.arm_mfcc_init_q15(self.q15, *args, _q(self.dct, 15), pos, length, _q(packed, 15),
                              _q(self.win, 15))
        self.q31 = dsp.arm_mfcc_instance_q31()
        dsp.arm_mfcc_init_q31(self.q31, *args, _q(self.dct, 31), pos, length, _q(packed, 31),
                              _q(self.win, 31))
        self.f32 = dsp.arm_mfcc_instance_f32()
        dsp.arm_mfcc_init_f32(self.f32, *args, self.dct.ravel().astype(np.float32), pos,
                              length, packed.astype(np.float32), self.win.astype(np.float32))

    def frames(self, pcm: np.ndarray) -> np.ndarray:
        """Pre-emphasised frames as float64 in [-1, 1): y / 2 / 32768 (y is up to 1.95x)."""
        x = pcm.astype(np.float64)
        y = x - self.spec.preemph_q15 / 32768 * np.concatenate([[0.0], x[:-1]])
        n = self.spec.n_frames(x.size)
        idx = np.arange(n)[:, None] * self.spec.hop_length + np.arange(self.spec.frame_length)
        return y[idx] / 65536.0

    def reference(self, u: np.ndarray) -> np.ndarray:
        """float64 in CMSIS's convention: DCT(ln(mel(|rfft(u w)|) + 1e-6))."""
        mag = np.abs(np.fft.rfft(u * self.win, axis=1))
        return np.log(mag @ self.mel.T + CMSIS_LOG_OFFSET) @ self.dct.T

    def run(self, u: np.ndarray) -> dict[str, np.ndarray]:
        d, n = self.dsp, self.spec.n_fft
        out = {"q15": [], "q31": [], "f32": []}
        tmp_q, tmp_f = np.zeros(2 * n, np.int32), np.zeros(n + 2, np.float32)
        for frame in u:
            out["q15"].append(d.arm_mfcc_q15(self.q15, _q(frame, 15), tmp_q)[1] / 2.0**7)
            out["q31"].append(d.arm_mfcc_q31(self.q31, _q(frame, 31), tmp_q)[1] / 2.0**23)
            out["f32"].append(d.arm_mfcc_f32(self.f32, frame.astype(np.float32), tmp_f))
        return {k: np.array(v, dtype=np.float64).reshape(-1, self.spec.n_ceps)
                for k, v in out.items()}


def _q(values: np.ndarray, bits: int) -> np.ndarray:
    dtype, lim = (np.int16, 2**15) if bits == 15 else (np.int32, 2**31)
    return np.clip(np.round(np.ravel(values) * lim), -lim, lim - 1).astype(dtype)


# ---- accuracy --------------------------------------------------------------------------
def accuracy(recordings: list[tuple[str, np.ndarray]], spec: FeatureSpec) -> list[tuple]:
    cmsis = Cmsis(spec)
    stats: dict[str, list[tuple[float, float, float]]] = {}
    lsb = float(1 << spec.out_frac_bits)

    def add(name: str, ref: np.ndarray, got: np.ndarray, to_log2: float) -> None:
        stats.setdefault(name, []).append(
            (snr_db(ref, got), snr_db(ref[:, 1:], got[:, 1:]),
             float(np.abs(got - ref).max()) * to_log2))

    for _name, pcm in recordings:
        if spec.n_frames(pcm.size) == 0 or not pcm.any():
            continue                    # digital silence: every front end gives its floor
        add("edge.mfcc (int16 out)", mfcc_reference(pcm, spec), mfcc(pcm, spec), 1 / lsb)
        u = cmsis.frames(pcm)
        ref = cmsis.reference(u)
        sound = np.abs(u).max(axis=1) > 0          # CMSIS's fixed-point silence level differs
        for variant, got in cmsis.run(u).items():
            add(f"CMSIS arm_mfcc_{variant}", ref, got, LN_MAG_TO_LOG2_POW)
            if variant != "f32" and sound.any():
                add(f"CMSIS arm_mfcc_{variant}, non-silent frames", ref[sound], got[sound],
                    LN_MAG_TO_LOG2_POW)
    rows = []
    for name, values in stats.items():
        arr = np.array(values)
        rows.append((name, arr.shape[0], np.nanmean(arr[:, 0]), np.nanmin(arr[:, 0]),
                     np.nanmean(arr[:, 1]), np.nanmin(arr[:, 1]), arr[:, 2].max()))
    return rows


# ---- speed -----------------------------------------------------------------------------
def best_time(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def python_speed(recordings: list[tuple[str, np.ndarray]], spec: FeatureSpec) -> dict:
    frames = sum(spec.n_frames(x.size) for _n, x in recordings)
    fixed = best_time(lambda: [mfcc(x, spec) for _n, x in recordings], 3)
    ref = best_time(lambda: [mfcc_reference(x, spec) for _n, x in recordings], 3)
    thirty = np.concatenate([x for _n, x in recordings])[: 30 * spec.sample_rate_hz]
    t30 = best_time(lambda: mfcc(thirty, spec), 20)
    t30_ref = best_time(lambda: mfcc_reference(thirty, spec), 20)
    return {"frames": frames, "fixed": frames / fixed, "ref": frames / ref,
            "t30": t30, "t30_ref": t30_ref}


def c_speed(recordings: list[tuple[str, np.ndarray]], spec: FeatureSpec, work: Path) -> dict:
    gcc = shutil.which("gcc")
    if gcc is None:
        return {}
    for name in ("hs_mfcc.c", "hs_mfcc.h", "hs_mfcc_cli.c", "hs_mfcc_tables.h"):
        shutil.copy(C_DIR / name, work / name)
    exe = work / "hs_mfcc_cli"
    subprocess.run([gcc, "-std=c99", "-O2", "-o", str(exe), str(work / "hs_mfcc.c"),
                    str(work / "hs_mfcc_cli.c")], check=True)
    pcm = np.concatenate([x for _n, x in recordings])[: (1 << 24) - 1]
    proc = subprocess.run([str(exe), "4096", "bench", "3"], input=pcm.tobytes(),
                          capture_output=True, check=True, text=False)
    frames, seconds = proc.stdout.decode().split()
    return {"frames": int(frames), "fps": int(frames) / float(seconds)}


# ---- Cortex-M4 size --------------------------------------------------------------------
def m4_size(work: Path) -> dict:
    cc, size = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-size")
    if cc is None or size is None:
        return {}
    for name in ("hs_mfcc.c", "hs_mfcc.h", "hs_mfcc_tables.h"):
        shutil.copy(C_DIR / name, work / name)
    obj = work / "hs_mfcc.o"
    subprocess.run([cc, "-std=c99", "-mcpu=cortex-m4", "-mthumb", "-Os", "-fstack-usage",
                    "-ffunction-sections", "-c", "-o", str(obj), str(work / "hs_mfcc.c")],
                   check=True, cwd=work)
    sections: dict[str, int] = {}
    for line in subprocess.run([size, "-A", str(obj)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            key = parts[0].split(".")[1] if parts[0].startswith(".") else parts[0]
            if key in ("text", "rodata", "data", "bss"):
                sections[key] = sections.get(key, 0) + int(parts[1])
    stack = _stack_usage(work / "hs_mfcc.su")
    state = _stream_state_size(cc, work)
    return {**sections, "stack": stack, "state": state,
            "flash": sections.get("text", 0) + sections.get("rodata", 0),
            "ram": sections.get("data", 0) + sections.get("bss", 0) + stack + state}


def _stack_usage(su: Path) -> int:
    """Deepest chain push -> frame -> {load_frame, log_mel -> log2_q, dct, ...}."""
    usage = {}
    for line in su.read_text().splitlines():
        m = re.match(r".*:(\w+)\s+(\d+)\s+\w+", line)
        if m:
            usage[m.group(1)] = int(m.group(2))
    top = usage.get("hs_mfcc_stream_push", 0) + usage.get("hs_mfcc_frame", 0)
    leaves = [usage.get("load_frame", 0) + usage.get("windowed", 0),
              usage.get("fft", 0), usage.get("power_spectrum", 0),
              usage.get("log_mel", 0) + usage.get("log2_q", 0), usage.get("dct", 0)]
    return top + max(leaves) + max(usage.get("bit_length", 0), usage.get("round_shift", 0))


def _stream_state_size(cc: str, work: Path) -> int:
    probe = work / "probe.c"
    probe.write_text('#include "hs_mfcc.h"\nchar probe[sizeof(hs_mfcc_stream)];\n')
    subprocess.run([cc, "-mcpu=cortex-m4", "-mthumb", "-c", "-o", str(work / "probe.o"),
                    str(probe)], check=True, cwd=work)
    out = subprocess.run(["arm-none-eabi-nm", "-S", str(work / "probe.o")], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[1], 16) if len(out) >= 2 else 0


# ---- spectra behind the spec defaults --------------------------------------------------
def spectra(root: Path, per_source: int = 60) -> list[tuple]:
    folders = {"PASCAL A": "pascal/set_a", "PASCAL B": "pascal/set_b",
               "PhysioNet a": "physionet2016/training-a", "PhysioNet b": "physionet2016/training-b",
               "PhysioNet d": "physionet2016/training-d"}
    rows = []
    for name, folder in folders.items():
        files = sorted((root / folder).glob("*.wav"))
        files = files[:: max(len(files) // per_source, 1)][:per_source]
        below: dict[int, list[float]] = {200: [], 800: []}
        rms = []
        for path in files:
            from edge.audio import load_audio

            x, info = load_audio(path)
            x = x.astype(np.float64) - x.mean()
            rms.append(float(np.sqrt((x**2).mean())))
            power = np.abs(np.fft.rfft(x)) ** 2
            freq = np.fft.rfftfreq(x.size, 1 / info.sample_rate)
            total = power[freq > 20].sum()
            if total == 0:
                continue                                        # digital silence
            for edge_hz in below:
                below[edge_hz].append(power[(freq > 20) & (freq < edge_hz)].sum() / total)
        rows.append((name, len(files), np.mean(below[200]), np.mean(below[800]),
                     np.min(below[800]), min(rms), np.median(rms), max(rms)))
    return rows


# ---- report ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use only N recordings")
    parser.add_argument("--spectra", action="store_true", help="also the spec's spectra")
    args = parser.parse_args(argv)
    spec, root = DEFAULT_SPEC, data_root()
    paths = sorted((root / "pascal").glob("set_*/*.wav"))
    if args.limit:
        paths = paths[:: max(len(paths) // args.limit, 1)][: args.limit]
    t0 = time.perf_counter()
    recordings = [(p.name, read_wav(p, spec.sample_rate_hz)) for p in paths]
    print(f"{len(recordings)} PASCAL recordings at {spec.sample_rate_hz} Hz "
          f"(loaded and resampled in {time.perf_counter() - t0:.1f} s); spec {spec.to_json()}\n")

    silent = sum(1 for _n, x in recordings if not x.any())
    if silent:
        print(f"({silent} recording(s) of pure digital silence left out: no SNR exists)\n")
    print("| front end | recordings | mean SNR dB | worst SNR dB | mean SNR c1+ dB "
          "| worst SNR c1+ dB | max abs err (log2 units) |")
    print("|---|---|---|---|---|---|---|")
    for row in accuracy(recordings, spec):
        print("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.4f} |".format(*row))

    py = python_speed(recordings, spec)
    with tempfile.TemporaryDirectory() as tmp:
        c = c_speed(recordings, spec, Path(tmp))
    print(f"\n| speed (one core) | frames/s | vs float64 reference |\n|---|---|---|\n"
          f"| float64 reference (numpy) | {py['ref']:,.0f} | 1.00 |\n"
          f"| edge.mfcc (numpy int64) | {py['fixed']:,.0f} | {py['fixed'] / py['ref']:.2f} |")
    if c:
        print(f"| hs_mfcc.c (gcc -O2, streaming) | {c['fps']:,.0f} | {c['fps'] / py['ref']:.2f} |")
    print(f"\n30 s recording: edge.mfcc {py['t30'] * 1e3:.1f} ms, "
          f"float64 reference {py['t30_ref'] * 1e3:.1f} ms (best of 20)")

    with tempfile.TemporaryDirectory() as tmp:
        size = m4_size(Path(tmp))
    if size:
        print(f"\nCortex-M4 (-Os): flash {size['flash']} B (text {size.get('text', 0)} + "
              f"rodata {size.get('rodata', 0)}), RAM {size['ram']} B (data {size.get('data', 0)}"
              f" + bss {size.get('bss', 0)} + stream state {size['state']} + stack "
              f"{size['stack']})")
    else:
        print("\narm-none-eabi-gcc not found: no Cortex-M4 size")

    if args.spectra:
        print("\n| source | files | energy < 200 Hz | energy < 800 Hz | min < 800 Hz "
              "| RMS min / median / max (int16) |\n|---|---|---|---|---|---|")
        for row in spectra(root):
            print("| {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.0f} / {:.0f} / {:.0f} |".format(
                *row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
