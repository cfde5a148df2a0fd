"""What an int8 model costs a microcontroller: flash, RAM, ops, multiply-accumulates.

The two budgets are the ones a Cortex-M4 board with 256 KB flash / 64 KB RAM leaves for the
model after the firmware, the front end and the audio buffers. The arena figure is
*measured* (the smallest arena TFLite Micro allocates and runs in, each probe in a child
process, see :func:`convert.tflm.smallest_arena`), never estimated from tensor sizes:
TFLite Micro's planner, scratch buffers and per-op state decide it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from convert.ops import count_macs, list_ops, unsupported_ops

MAX_MODEL_BYTES = 64 * 1024
"""Flatbuffer size target (metadata included): what goes into the MCU's flash."""

MAX_ARENA_BYTES = 48 * 1024
"""TFLite Micro tensor arena target: what the model may take of the MCU's RAM."""

KIB = 1024


@dataclass(frozen=True)
class SizeReport:
    """Sizes and ops of one model, and whether it fits the microcontroller budget."""

    model_bytes: int
    arena_bytes: int | None  # None when not measured
    ops: tuple[str, ...]  # execution order
    unsupported: tuple[str, ...]  # ops TFLite Micro does not run in int8
    macs: dict[str, int]

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    def checks(self) -> dict[str, bool]:
        """Each target: True when met (the arena check only when it was measured)."""
        out = {"model_bytes": self.model_bytes <= MAX_MODEL_BYTES,
               "tflm_ops": not self.unsupported}
        if self.arena_bytes is not None:
            out["arena_bytes"] = self.arena_bytes <= MAX_ARENA_BYTES
        return out

    @property
    def ok(self) -> bool:
        return all(self.checks().values())

    def failures(self) -> list[str]:
        """One phrase per missed target, for a one-line error."""
        out = []
        if self.model_bytes > MAX_MODEL_BYTES:
            out.append(f"model {self.model_bytes} bytes > {MAX_MODEL_BYTES}")
        if self.arena_bytes is not None and self.arena_bytes > MAX_ARENA_BYTES:
            out.append(f"arena {self.arena_bytes} bytes > {MAX_ARENA_BYTES}")
        if self.unsupported:
            out.append(f"ops {', '.join(self.unsupported)} not in TFLite Micro int8")
        return out

    def to_dict(self) -> dict:
        return {"model_bytes": self.model_bytes, "arena_bytes": self.arena_bytes,
                "max_model_bytes": MAX_MODEL_BYTES, "max_arena_bytes": MAX_ARENA_BYTES,
                "ops": list(self.ops), "op_counts": dict(Counter(self.ops)),
                "unsupported_ops": list(self.unsupported), "macs": dict(self.macs),
                "total_macs": self.total_macs, "checks": self.checks(), "ok": self.ok}

    def lines(self) -> list[str]:
        """The printed report: one figure per line, each target with PASS/FAIL."""
        counts = Counter(self.ops)
        op_text = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in counts.items())
        rows = [_target("model size", self.model_bytes, MAX_MODEL_BYTES)]
        if self.arena_bytes is None:
            rows.append("arena (TFLite Micro)  not measured")
        else:
            rows.append(_target("arena (TFLite Micro)", self.arena_bytes, MAX_ARENA_BYTES))
        rows.append(f"{'ops':<22}{op_text}")
        rows.append(f"{'TFLite Micro int8':<22}"
                    + ("PASS (every op supported)" if not self.unsupported
                       else f"FAIL (unsupported: {', '.join(self.unsupported)})"))
        mac_text = ", ".join(f"{k} {v:,}" for k, v in sorted(self.macs.items()))
        rows.append(f"{'MACs per window':<22}{self.total_macs:,} ({mac_text})")
        return rows


def _target(name: str, value: int, limit: int) -> str:
    verdict = "PASS" if value <= limit else "FAIL"
    return (f"{name:<22}{value:>8,} bytes ({value / KIB:.1f} KB)  target <= {limit // KIB} KB"
            f"  {verdict}")


def size_report(model: bytes, *, measure_arena: bool = True) -> SizeReport:
    """Sizes, ops and MACs of ``model``; the arena search takes ~15 child processes."""
    from convert.tflm import smallest_arena

    bad = tuple(unsupported_ops(model))
    arena = smallest_arena(model) if measure_arena and not bad else None
    return SizeReport(len(model), arena, tuple(list_ops(model)), bad, count_macs(model))
