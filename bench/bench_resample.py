"""Throughput of the integer resampler on real recordings, against its float64 reference.

Prints, for each input rate, seconds of audio resampled per second of compute (the
"x realtime" factor) for edge.resample.resample (int16 in, int64 accumulators, int16 out)
and for edge.resample.resample_reference (the same filter in float64 numpy), both timed
in this process on the same samples (best of --repeat runs), plus their ratio and the
SNR of the integer output against the reference (and its error rms in LSB: 0.289 is what
rounding to int16 alone costs, so on quiet recordings the SNR is set by int16, not by us).

Real rates: 44.1 kHz (PASCAL set A), 4 kHz (PASCAL set B), 2 kHz (PhysioNet 2016). No
recordings exist at 8, 16 or 48 kHz, so those rows use PASCAL A made into that rate by the
resampler itself (marked "from A").

    python3 bench/bench_resample.py [--dst 2000] [--seconds 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.audio import read_wav  # noqa: E402
from edge.resample import design_filter, resample, resample_reference  # noqa: E402


def data_root() -> Path:
    """As tests/conftest.py: $HEARTSOUND_DATA lists the data folders (':'-separated) and
    their parent is the root; else ../shared/data beside the repository."""
    entries = [p for p in os.environ.get("HEARTSOUND_DATA", "").split(os.pathsep) if p.strip()]
    if entries:
        return Path(entries[0]).expanduser().resolve().parent
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def real_audio(folder: Path, seconds: float, rate: int) -> np.ndarray:
    """Whole recordings from ``folder`` concatenated until ``seconds`` of audio."""
    need, parts = int(seconds * rate), []
    for path in sorted(folder.glob("*.wav")):
        parts.append(read_wav(path))
        need -= parts[-1].size
        if need <= 0:
            break
    return np.concatenate(parts)[: int(seconds * rate)]


def best_time(fn, *args, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dst", type=int, default=2000, help="output rate in Hz")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per input rate")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is kept")
    args = parser.parse_args()

    root = data_root()
    pascal_a = real_audio(root / "pascal" / "set_a", args.seconds, 44100)
    inputs = {
        44100: ("PASCAL A", pascal_a),
        4000: ("PASCAL B", real_audio(root / "pascal" / "set_b", args.seconds, 4000)),
        2000: ("PhysioNet a", real_audio(root / "physionet2016" / "training-a",
                                         args.seconds, 2000)),
    }
    for rate in (8000, 16000, 48000):
        inputs[rate] = ("from A", resample(pascal_a, 44100, rate))

    header = (f"{'in Hz':>6} {'source':<11} {'L/M':>7} {'taps':>5} {'audio s':>7} "
              f"{'int x RT':>9} {'f64 x RT':>9} {'int/f64':>7} {'SNR dB':>6} {'err rms':>7}")
    print(f"resample to {args.dst} Hz, best of {args.repeat}")
    print(header)
    print("-" * len(header))
    for rate in sorted(inputs):
        name, x = inputs[rate]
        seconds = x.size / rate
        if rate == args.dst:
            print(f"{rate:>6} {name:<11} {'1/1':>7} {'-':>5} {seconds:7.1f}  identity copy")
            continue
        g = math.gcd(rate, args.dst)
        table = design_filter(args.dst // g, rate // g)  # design outside the timing
        t_int = best_time(resample, x, rate, args.dst, repeat=args.repeat)
        t_ref = best_time(resample_reference, x, rate, args.dst, repeat=args.repeat)
        ref = np.clip(resample_reference(x, rate, args.dst), -32768, 32767)
        err = resample(x, rate, args.dst) - ref
        snr = 10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2))
        print(f"{rate:>6} {name:<11} {f'{table.up}/{table.down}':>7} {table.taps:>5} "
              f"{seconds:7.1f} {seconds / t_int:9.0f} {seconds / t_ref:9.0f} "
              f"{t_ref / t_int:7.2f} {snr:6.1f} {np.sqrt(np.mean(err ** 2)):7.3f}")


if __name__ == "__main__":
    main()
