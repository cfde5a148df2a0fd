"""A sweep's result: one row per trial, ranked, printed and written as JSON and CSV.

Rows of failed trials stay in the table (unranked, with their error): a sweep that hides
its failures invites the conclusion that a combination was tried and was bad.

Why the split id is checked here: a trial ranked against others must have been measured
on the same validation patients. Every trial's ``metrics.json`` records the id of its
split; a trial whose id differs from the sweep's becomes an error row, not a rank.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from train.sweep.spec import METRICS, Sweep

SUMMARY_FORMAT = "heartsound-sweep-summary/1"
SUMMARY_JSON = "sweep_summary.json"
SUMMARY_CSV = "sweep_summary.csv"
FIGURES = ("val_macc", "val_auc", "val_se", "val_sp", "test_macc", "test_auc")
DETAILS = ("threshold", "best_epoch", "epochs_run", "seconds", "model_params", "spec_hash",
           "split_id")
SPLIT_ID_SHOWN = 12  # hex digits of the split id in messages and the table
TABLE_ERROR_CHARS = 100


def _score(row: dict, metric: str) -> float:
    value = row.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -1.0


def check_split_ids(rows: Sequence[dict], expected: str) -> list[dict]:
    """Rows whose trial ran on another split than ``expected`` turned into error rows."""
    out = []
    for row in rows:
        got = row.get("split_id")
        if not row.get("error") and got != expected:
            row = {**row, "error": f"split id {str(got)[:SPLIT_ID_SHOWN]} differs from the "
                   f"sweep's {expected[:SPLIT_ID_SHOWN]}: not comparable, not ranked"}
        out.append(row)
    return out


def rank_rows(rows: Sequence[dict], metric: str) -> list[dict]:
    """Successful trials best first by ``metric`` (ties: trial name), then failed ones."""
    ok = sorted((r for r in rows if not r.get("error")),
                key=lambda r: (-_score(r, metric), r["trial"]))
    failed = sorted((r for r in rows if r.get("error")), key=lambda r: r["trial"])
    ranked = [{**r, "rank": i + 1, "status": "ok"} for i, r in enumerate(ok)]
    return ranked + [{**r, "rank": None, "status": "error"} for r in failed]


def build_summary(sweep: Sweep, rows: Sequence[dict], split_id: str, out: Path,
                  seconds: float, cluster: str) -> dict:
    """Everything the JSON file holds: the sweep, where it ran, the ranked rows."""
    ranked = rank_rows(check_split_ids(rows, split_id), sweep.metric)
    return {
        "format": SUMMARY_FORMAT,
        "sweep_file": str(sweep.path),
        "out": str(out),
        "metric": sweep.metric,
        "split_id": split_id,
        "split_seed": sweep.split_seed,
        "search": sweep.search,
        "varying": list(sweep.varying),
        "cluster": cluster,
        "seconds": round(seconds, 1),
        "n_trials": len(ranked),
        "n_failed": sum(r["status"] == "error" for r in ranked),
        "trials": ranked,
    }


def write_summary(out: Path, summary: dict) -> tuple[Path, Path]:
    """``sweep_summary.json`` (everything) and ``sweep_summary.csv`` (one line per trial)."""
    json_path, csv_path = out / SUMMARY_JSON, out / SUMMARY_CSV
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    params = sorted({k for r in summary["trials"] for k in r.get("params", {})})
    columns = ["rank", "trial", "status", *FIGURES, *(f"param.{p}" for p in params),
               *DETAILS, "run_dir", "error"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in summary["trials"]:
            values = {**row, **{f"param.{k}": v for k, v in row.get("params", {}).items()}}
            writer.writerow(["" if values.get(c) is None else values[c] for c in columns])
    return json_path, csv_path


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return "n/a" if value is None else str(value)


def _param(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render_table(summary: dict) -> str:
    """The ranked table for the terminal, one line per trial (errors shortened)."""
    varying = summary["varying"]
    header = (["rank", "trial", *(METRICS_SHORT.get(f, f) for f in FIGURES), "best/ep", "s"]
              + varying + ["run folder"])
    lines = []
    for r in summary["trials"]:
        rel = _relative(r["run_dir"], summary["out"])
        params = [_param(r.get("params", {}).get(v)) for v in varying]
        if r["status"] == "error":
            error = r["error"][:TABLE_ERROR_CHARS]
            lines.append(["-", r["trial"], f"error: {error}"] + [""] * (len(FIGURES) + 1)
                         + params + [rel])
            continue
        lines.append([str(r["rank"]), r["trial"], *(_fmt(r.get(f)) for f in FIGURES),
                      f"{r.get('best_epoch')}/{r.get('epochs_run')}",
                      f"{r.get('seconds') or 0:.0f}",
                      *params, rel])
    return _columns(header, lines, error_col=2, span=len(FIGURES) + 2)


METRICS_SHORT = {"val_macc": "val MAcc", "val_auc": "val AUC", "val_se": "val Se",
                 "val_sp": "val Sp", "test_macc": "test MAcc", "test_auc": "test AUC"}


def _relative(path: str, out: str) -> str:
    try:
        return str(Path(path).relative_to(out))
    except ValueError:
        return path


def _columns(header: list[str], lines: list[list[str]], error_col: int, span: int) -> str:
    """Left-aligned columns; an error text spans the figure columns instead of widening them."""
    widths = [len(h) for h in header]
    for line in lines:
        spanned = line[error_col].startswith("error: ")
        for i, cell in enumerate(line):
            if spanned and error_col <= i < error_col + span:
                continue
            widths[i] = max(widths[i], len(cell))
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for line in lines:
        if line[error_col].startswith("error: "):
            room = sum(widths[error_col:error_col + span]) + 2 * (span - 1)
            cells = (line[:error_col] + [line[error_col].ljust(room)]
                     + line[error_col + span:])
            ws = widths[:error_col] + [room] + widths[error_col + span:]
        else:
            cells, ws = line, widths
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, ws, strict=True)).rstrip())
    return "\n".join(out)


def headline(summary: dict) -> str:
    """The lines above the table: what was ranked, on which split, where the files are."""
    n_ok = summary["n_trials"] - summary["n_failed"]
    return (f"sweep {summary['sweep_file']}: {summary['n_trials']} trials "
            f"({n_ok} ok, {summary['n_failed']} failed) in {summary['seconds']:.0f} s on "
            f"{summary['cluster']}\nranked by {METRICS[summary['metric']]} (recording level); "
            f"every trial on split {summary['split_id'][:SPLIT_ID_SHOWN]} "
            f"(split_seed {summary['split_seed']}); run folders under {summary['out']}")
