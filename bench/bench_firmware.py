"""The firmware on an emulated Cortex-M4: instructions per front-end frame and per
window, next to the model's multiply-accumulates, and the image's size per part.

Builds the serving app from an export of the model (``firmware_bridge.build.build_app``,
TFLite Micro from the cache), boots it on QEMU's mps2-an386 with ``-icount shift=0`` and
UART0 on a pseudo-terminal, and screens real recordings through the host client. The
firmware counts SysTick ticks around every sample's front-end push and every
``Invoke()``; under ``-icount shift=0`` one tick is exactly 40 instructions, so the
counts are deterministic (the same on every run and machine). Two model counters, each
under its own name: ``HS_INVOKES`` sums the ticks of ``Invoke()`` alone ("Invoke()
instructions per window"); ``HS_WINDOW`` times one window from ``Invoke()`` through
reading and copying its output ("window scoring instructions": Invoke + output copy). The MAC count
(``firmware_bridge.model_cost``) is the floor: Cortex-M4's SMLAD does two MACs per
instruction, so instructions >= MACs / 2.

    python3 bench/bench_firmware.py [--model M.tflite] [--files N] [--json]

Prints markdown tables (and, with --json, one JSON object instead).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.audio import read_wav  # noqa: E402
from edge.screening import PACKAGED_MODEL  # noqa: E402
from firmware_bridge import build  # noqa: E402
from firmware_bridge.client import DeviceClient  # noqa: E402
from firmware_bridge.model_cost import model_macs  # noqa: E402
from firmware_bridge.serve import serve_qemu, session_figures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.wav"))
FLASH_TARGET, RAM_TARGET = 128 * 1024, 64 * 1024
#: Cortex-M4 clock of the AN386 board (and typical of M4 parts), for a time figure.
CLOCK_HZ = 25_000_000
ANSWER_TIMEOUT_S = 5.0


def measure(elf: Path, recordings: list[Path], rate: int) -> list[dict]:
    """Per recording: frames, windows and instructions, from the firmware's own counters."""
    rows = []
    with serve_qemu(elf) as fw, DeviceClient(fw.port, timeout=ANSWER_TIMEOUT_S) as client:
        for path in recordings:
            offset = len(fw.console)
            run = client.run(read_wav(path, rate))
            fig = session_figures(fw.session_console(offset))
            rows.append({"file": path.name, "seconds": run.samples / rate, **fig})
    return rows


def summary(rows: list[dict], macs: int, rate: int, hop: int) -> dict:
    """Totals; the MAC and time figures use Invoke() alone (HS_INVOKES), the per-window
    counter (HS_WINDOW: Invoke + output copy) is reported beside it under its own name."""
    frames = sum(r["frames"] for r in rows)
    per_frame = sum(r["frontend_instructions"] for r in rows) / frames
    scoring = [i for r in rows for i in r["window_instructions"]]
    windows = sum(r["windows"] for r in rows)
    invoke = round(sum(r["invoke_instructions"] for r in rows) / windows)
    frames_per_s = rate / hop
    return {
        "frontend_instructions_per_frame": round(per_frame),
        "frontend_mips_realtime": round(per_frame * frames_per_s / 1e6, 3),
        "invoke_instructions_per_window": invoke,
        "window_scoring_instructions_min": min(scoring),
        "window_scoring_instructions_max": max(scoring),
        "macs": macs, "invoke_instructions_per_mac": round(invoke / macs, 2),
        "invoke_ms_at_25mhz": round(invoke / CLOCK_HZ * 1e3, 1),
        "frames": frames, "windows": windows,
        "stack_used_max": max(r["stack_used"] for r in rows),
    }


def print_tables(rows: list[dict], total: dict, report: build.SizeReport, model: Path) -> None:
    print(f"## Firmware on an emulated Cortex-M4 (QEMU mps2-an386, -icount shift=0), {model.name}"
          "\n\n| recording | s | frames | instr/frame | windows | Invoke() instr/window "
          "| window scoring instr (Invoke + output copy) |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per_inv = (r["invoke_instructions"] // r["windows"]) if r["windows"] else 0
        scoring = r["window_instructions"]
        per_win = sum(scoring) // len(scoring) if scoring else 0
        print(f"| {r['file']} | {r['seconds']:.1f} | {r['frames']} | "
              f"{r['frontend_instructions'] / r['frames']:,.0f} | {r['windows']} | "
              f"{per_inv:,} | {per_win:,} |")
    print(f"\n| figure | value |\n|---|---:|\n"
          f"| front end, instructions per frame | {total['frontend_instructions_per_frame']:,} |"
          f"\n| front end, MIPS for real time | {total['frontend_mips_realtime']} |\n"
          f"| model, Invoke() instructions per window (HS_INVOKES) | "
          f"{total['invoke_instructions_per_window']:,} |\n"
          f"| model, window scoring instructions: Invoke + output copy (HS_WINDOW), min | "
          f"{total['window_scoring_instructions_min']:,} |\n"
          f"| model, multiply-accumulates | {total['macs']:,} |\n"
          f"| Invoke() instructions per MAC (floor 0.5) | "
          f"{total['invoke_instructions_per_mac']} |\n"
          f"| Invoke() at 25 MHz, 1 instr/cycle | {total['invoke_ms_at_25mhz']} ms |\n"
          f"| peak stack | {total['stack_used_max']:,} B |")
    print(f"\n## Size (arm-none-eabi-gcc -Os, --gc-sections); targets {FLASH_TARGET // 1024} KB "
          f"flash, {RAM_TARGET // 1024} KB RAM\n\n```\n{report.table()}\n```")
    ok = report.flash <= FLASH_TARGET and report.ram <= RAM_TARGET
    print(f"\nwhole app: {report.flash:,} B flash, {report.ram:,} B RAM: "
          f"{'within' if ok else 'OVER'} the targets")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    parser.add_argument("--files", type=int, default=len(EXAMPLES),
                        help="how many of examples/*.wav to screen (default: all)")
    parser.add_argument("--arena", type=int, help="arena bytes (default: measured)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model = args.model.read_bytes()
    from edge.model_meta import read_model_meta

    spec = read_model_meta(model, name=str(args.model)).spec
    with tempfile.TemporaryDirectory(prefix="hs-bench-fw-") as tmp:
        app = build.build_app(build.CORTEX_M4, model, Path(tmp), arena_size=args.arena)
        report = build.size_report(app)
        rows = measure(app.executable, EXAMPLES[: args.files], spec.sample_rate_hz)
    total = summary(rows, model_macs(model), spec.sample_rate_hz, spec.hop_length)
    if args.json:
        print(json.dumps({"recordings": rows, "summary": total, "arena_bytes": app.arena_size,
                          "size": {"flash": report.flash, "ram": report.ram,
                                   "parts": report.parts}}, default=_plain))
    else:
        print_tables(rows, total, report, args.model)
    return 0


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    sys.exit(main())
