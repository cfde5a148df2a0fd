"""The screening report a nurse reads at one glance, and a detail page for specialists.

Page 1 (the PNG asked for) answers, top to bottom: what to do next (REFER FOR A CLOSER
LOOK, NO REFERRAL or RETAKE THE RECORDING) and why (the recording's score against the
named referral threshold, or the quality gate's reason and hint); whose recording, when,
on which device and with which model; the recording (seconds, amplitude scaled to fit)
above each 3-second window's score, coloured by its side of the threshold, and hatched
where nothing was scored; and "Screening aid, not a diagnosis". Page 2
(``<name>-detail.png``) keeps the cepstra, the gate's measurements and the class scores
for heart-sound specialists, off the page a nurse acts on.

The header's texts also go into each PNG's ``Description`` metadata, so a record system
(or a test) reads what the page says without reading pixels.

Optional: needs matplotlib (the ``report`` extra). It is imported only when a report is
drawn, so the device runtime never loads it; Figure objects are used without pyplot, so
no window system or global backend state is involved.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import decision
from edge.errors import DeviceError, UsageError
from edge.mfcc import mfcc
from edge.screening import ScreeningResult, advice, is_unfamiliar
from edge.screening_log import Screening
from edge.spec import FeatureSpec

#: Where the two plots sit on page one (figure fractions): below the reason, which takes
#: up to eight lines of REASON_WIDTH characters (an unfamiliar stethoscope's).
RECORDING_AXES = (0.07, 0.34, 0.88, 0.24)  # room right of the axis for its last label
WINDOWS_AXES = (0.07, 0.12, 0.88, 0.14)
REASON_WIDTH = 72
PAGE_INCHES = (11.69, 8.27)  # A4 landscape: prints on a ward printer as it shows on screen
DPI = 110
DISCLAIMER = ("Screening aid, not a diagnosis. 'No referral' does not rule out heart "
              "disease: decide with the clinical picture.")
# Okabe-Ito colours: told apart with red-green colour blindness; words carry the meaning
VERDICT_COLOURS = {decision.ABNORMAL: "#b34000", decision.NORMAL: "#00795a",
                   decision.UNSURE: "#4d4d4d"}
ABOVE, BELOW, NOT_SCORED = "#d55e00", "#009e73", "#8c8c8c"
MIN_LABEL_PX = 36  # a window's score is written in its box only where it fits


@dataclass(frozen=True)
class Page:
    """One drawn page and the header texts on it (also written as PNG metadata)."""

    figure: object  # matplotlib.figure.Figure (matplotlib is optional: not imported here)
    lines: list[str]


def write_report(path: Path, pcm: np.ndarray, screener, result: ScreeningResult,
                 record: Screening) -> tuple[Path, Path]:
    """Write page 1 to ``path`` and the detail page beside it; return both paths.

    ``record`` is the screening as the log stores it (patient, time, device), so the
    page and the log say the same.
    """
    page1, detail = build_pages(pcm, screener.spec, result, record, screener.meta.version)
    detail_path = detail_path_for(path)
    for page, out in ((page1, path), (detail, detail_path)):
        try:
            page.figure.savefig(out, dpi=DPI, metadata={"Description": "\n".join(page.lines)})
        except OSError as exc:
            raise DeviceError(f"{out}: cannot write the report ({exc.strerror}); the "
                              "screening above was printed and logged; choose a writable "
                              "path") from None
    return path, detail_path


def detail_path_for(path: Path) -> Path:
    """``report.png`` -> ``report-detail.png``: the specialists' page sits beside page 1."""
    return path.with_name(f"{path.stem}-detail{path.suffix or '.png'}")


def build_pages(pcm: np.ndarray, spec: FeatureSpec, result: ScreeningResult,
                record: Screening, model_version: str) -> tuple[Page, Page]:
    """(page 1, detail page), drawn but not saved."""
    figure = _figure_class()
    return (_page_one(figure(figsize=PAGE_INCHES), pcm, spec, result, record, model_version),
            _detail_page(figure(figsize=PAGE_INCHES), pcm, spec, result, record,
                         model_version))


def headline(result: ScreeningResult) -> str:
    """The action, in capitals: what a nurse must read first."""
    return advice(result).upper()


NO_RESULT = "No result."
"""How a report that has no decision starts its reason: plainly, before why."""


def reason(result: ScreeningResult) -> str:
    """Why that action: the score against the named threshold, or the gate's reason."""
    if is_unfamiliar(result):
        q = result.quality
        return (f"{NO_RESULT} Why: {q['reason']}, so the model's score is not used. "
                f"Next: {q['hint']}.")
    if result.decision == decision.UNSURE:
        q = result.quality
        return (f"{NO_RESULT} Why: the quality gate found {q['reason']} in this recording, "
                f"so it was not scored. Next: {q['hint']}.")
    p, t = _two(result.probability_abnormal, result.threshold)
    side = "at or above" if result.decision == decision.ABNORMAL else "below"
    n = len(result.windows)
    return (f"Why: score {p} (the model's abnormality score from 0 to 1, not a calibrated "
            f"probability; mean of {n} window{'s' if n != 1 else ''}) is {side} the "
            f"referral threshold {t}.")


def facts(result: ScreeningResult, record: Screening, model_version: str) -> list[str]:
    """Who, when, where and with what: the lines a record needs beside the decision."""
    name = Path(record.file).name if record.file else "microphone"
    return [f"Patient: {record.patient_id or 'not given'}",
            f"Screened: {_local_time(record.time_utc)}",
            f"Device: {record.device_id}",
            f"Model: {model_version or 'unnamed'} (sha256 {result.model_sha256[:12]})",
            f"Recording: {name}, {result.seconds:.1f} s"]


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--report needs matplotlib (the screening above was printed and "
                         "logged): pip install 'heartsound[report]'") from None
    return Figure


def _two(p: float, t: float) -> tuple[str, str]:
    """Score and threshold to 2 decimals, or 3 when 2 would print them equal."""
    digits = 2 if f"{p:.2f}" != f"{t:.2f}" else 3
    return f"{p:.{digits}f}", f"{t:.{digits}f}"


def _local_time(time_utc: str) -> str:
    """ISO UTC from the log -> the device's local time with its zone name."""
    when = dt.datetime.fromisoformat(time_utc.replace("Z", "+00:00")).astimezone()
    return when.strftime("%Y-%m-%d %H:%M %Z")


def _page_one(fig, pcm, spec, result, record, model_version) -> Page:
    lines = [headline(result), reason(result), *facts(result, record, model_version),
             DISCLAIMER]
    fig.text(0.04, 0.925, f" {lines[0]} ", fontsize=24, weight="bold", color="white",
             va="center", bbox={"boxstyle": "round,pad=0.35", "fc":
                                VERDICT_COLOURS[result.decision], "ec": "none"})
    fig.text(0.04, 0.855, _reason_block(lines[1]), fontsize=12.5, va="top", linespacing=1.4)
    fig.text(0.965, 0.955, "\n".join(lines[2:-1]), fontsize=10.5, ha="right", va="top",
             linespacing=1.6)
    duration = len(pcm) / spec.sample_rate_hz
    end = max([duration] + [w["start_s"] + spec.window_s for w in result.windows])
    ax_rec = fig.add_axes(RECORDING_AXES)
    ax_win = fig.add_axes(WINDOWS_AXES, sharex=ax_rec)
    _recording(ax_rec, pcm, spec, result, end)
    _window_strip(ax_win, spec, result, end)
    fig.text(0.5, 0.025, DISCLAIMER, ha="center", fontsize=11.5, weight="bold")
    return Page(fig, lines)


def _reason_block(text: str) -> str:
    """The reason wrapped for the page, each of its parts (No result / Why / Next) on
    lines of its own."""
    parts = text.replace(" Why: ", "\nWhy: ").replace(" Next: ", "\nNext: ").split("\n")
    return "\n".join(textwrap.fill(part, REASON_WIDTH) for part in parts)


def _unscored_from(spec: FeatureSpec, result: ScreeningResult) -> float:
    """Seconds from which nothing was scored: 0 when the gate refused the recording,
    else the end of the last window (a tail shorter than one hop is not scored)."""
    if not result.windows:
        return 0.0
    return result.windows[-1]["start_s"] + spec.window_s


def _recording(ax, pcm, spec, result, end) -> None:
    t = np.arange(len(pcm)) / spec.sample_rate_hz
    x = pcm.astype(np.float64) - float(np.mean(pcm)) if len(pcm) else np.zeros(0)
    peak = float(np.abs(x).max()) if x.size else 0.0
    ax.plot(t, x / (peak or 1.0), lw=0.5, color="black")
    _looped(ax, x / (peak or 1.0), spec, end)
    ax.set_ylim(-1.1, 1.1)
    ax.set_yticks([])
    ax.set_ylabel("sound\n(scaled to fit)")
    ax.set_xlim(0, end)
    ax.set_title("The recording", loc="left", fontsize=11, weight="bold")
    ax.tick_params(labelbottom=False)
    ax.grid(axis="x", alpha=0.3)
    _hatch_unscored(ax, _unscored_from(spec, result), end)


def _looped(ax, x: np.ndarray, spec: FeatureSpec, end: float) -> None:
    """A recording shorter than a window is heard looped (edge.mfcc.fill_window): draw
    the repeat in grey, so the window's box matches what the model heard."""
    n_end = round(end * spec.sample_rate_hz)
    if x.size == 0 or n_end - x.size < spec.hop_length:  # not looped
        return
    loop = np.tile(x, -(-n_end // x.size))[x.size:n_end]
    ax.plot((x.size + np.arange(loop.size)) / spec.sample_rate_hz, loop, lw=0.5,
            color=NOT_SCORED)
    ax.text((x.size / spec.sample_rate_hz + end) / 2, 0.92, "repeated to fill the window",
            ha="center", fontsize=9.5, color="#555555")


def _hatch_unscored(ax, start: float, end: float) -> None:
    if start < end - 1e-6:
        ax.axvspan(start, end, facecolor=NOT_SCORED, alpha=0.18, hatch="//",
                   edgecolor=NOT_SCORED, lw=0)


def _window_strip(ax, spec, result, end) -> None:
    """Each window as a box on the recording's time axis, in staggered lanes (windows
    overlap), coloured by its side of the threshold, with its score where it fits."""
    from matplotlib.patches import Rectangle

    lanes = max(1, round(spec.window_s / spec.window_hop_s))
    ax.set_xlim(0, end)
    ax.set_ylim(0, lanes)
    ax.set_yticks([])
    ax.set_xlabel("time (seconds)")
    ax.grid(axis="x", alpha=0.3)
    thr = result.threshold
    ax.set_title(_strip_title(spec, result), loc="left", fontsize=11, weight="bold")
    _hatch_unscored(ax, _unscored_from(spec, result), end)
    if not result.windows:
        short = result.quality["reason"].split(":")[0]  # the figures are in the text above
        ax.text(end / 2, lanes / 2, f"no result: not scored ({short})", ha="center",
                va="center", fontsize=11, bbox={"fc": "white", "ec": NOT_SCORED})
        return
    label = _room_for_labels(ax, spec, end)
    for i, w in enumerate(result.windows):
        p, s = w["probability_abnormal"], w["start_s"]
        y = lanes - 1 - i % lanes + 0.1
        ax.add_patch(Rectangle((s, y), spec.window_s, 0.8, fc=ABOVE if p >= thr else BELOW,
                               ec="white", lw=1))
        if label:
            ax.text(s + spec.window_s / 2, y + 0.4, f"{p:.2f}", ha="center", va="center",
                    fontsize=9.5, color="white")


def _strip_title(spec: FeatureSpec, result: ScreeningResult) -> str:
    if not result.windows:
        return f"Windows of {spec.window_s:g} seconds: none scored"
    return (f"Score of each {spec.window_s:g}-second window: orange at or above the "
            f"referral threshold {result.threshold:.2f}, green below; hatched: not scored")


def _room_for_labels(ax, spec: FeatureSpec, end: float) -> bool:
    width_px = ax.get_position().width * ax.figure.get_figwidth() * DPI
    return width_px * spec.window_s / max(end, 1e-9) >= MIN_LABEL_PX


def _detail_page(fig, pcm, spec, result, record, model_version):
    """Cepstra, loudness and the numbers behind the decision, for specialists."""
    title = "Detail for heart-sound specialists (page 2; page 1 holds the decision)"
    about = facts(result, record, model_version)
    fig.text(0.04, 0.965, title, fontsize=13, weight="bold", va="top")
    fig.text(0.04, 0.925, "     ".join(about[:3]) + "\n" + "     ".join(about[3:]),
             fontsize=9.5, va="top", linespacing=1.5)
    duration = len(pcm) / spec.sample_rate_hz
    feats = mfcc(pcm, spec) if len(pcm) >= spec.frame_length else np.zeros((0, spec.n_ceps))
    ax_c = fig.add_axes((0.09, 0.48, 0.6, 0.36))
    ax_0 = fig.add_axes((0.09, 0.12, 0.6, 0.30), sharex=ax_c)
    _cepstra(ax_c, feats, spec, duration)
    _loudness(ax_0, feats, spec)
    fig.text(0.73, 0.84, _numbers(result, spec), fontsize=9.5, va="top", family="monospace",
             linespacing=1.45)
    fig.text(0.5, 0.025, DISCLAIMER, ha="center", fontsize=10)
    return Page(fig, [title, *about, DISCLAIMER])


def _cepstra(ax, feats: np.ndarray, spec: FeatureSpec, duration: float) -> None:
    # c0 (loudness) dwarfs the rest: show c1.. each scaled to its own range
    ceps = feats[:, 1:].T.astype(np.float64)
    ceps = (ceps - ceps.mean(axis=1, keepdims=True)) / (ceps.std(axis=1, keepdims=True) + 1e-9)
    extent = (0, len(feats) * spec.hop_length / spec.sample_rate_hz, 0.5, spec.n_ceps - 0.5)
    if len(feats):
        ax.imshow(ceps, aspect="auto", origin="lower", extent=extent, cmap="magma",
                  vmin=-3, vmax=3, interpolation="nearest")
    ax.set_xlim(0, max(duration, spec.window_s))
    ax.set_ylabel("cepstrum c1..c12\n(each scaled to its SD)")
    ax.set_title("Fixed-point MFCC front end, as the model sees it", loc="left", fontsize=11)
    ax.tick_params(labelbottom=False)


def _loudness(ax, feats: np.ndarray, spec: FeatureSpec) -> None:
    t = np.arange(len(feats)) * spec.hop_length / spec.sample_rate_hz
    ax.plot(t, feats[:, 0], lw=0.7, color="black")
    ax.set_ylabel("c0 (log energy,\nfront-end units)")
    ax.set_xlabel("time (seconds)")
    ax.grid(alpha=0.3)


def _numbers(result: ScreeningResult, spec: FeatureSpec) -> str:
    q = result.quality
    rows = ["Quality gate: " + ("passed" if q["ok"] else f"unsure, {q['reason']}")]
    rows += [f"  {k} = {v}" for k, v in q.get("figures", {}).items()]
    rows.append("")
    if result.probability_abnormal is not None:
        rows += [f"Recording score {result.probability_abnormal:.4f}",
                 "  class scores, mean of windows:"]
        rows += [f"    P({c}) = {p:.4f}" for c, p in result.classes.items()]
    rows.append(f"threshold   {result.threshold:.4f}")
    rows += ["", f"Windows of {spec.window_s:g} s every {spec.window_hop_s:g} s:"]
    rows += [f"  {w['start_s']:6.1f} s  {w['probability_abnormal']:.3f}"
             for w in result.windows[:24]] or ["  none scored"]
    if len(result.windows) > 24:
        rows.append(f"  ... {len(result.windows) - 24} more (heartsound screen --json)")
    rows += ["", f"Front end: {spec.sample_rate_hz} Hz, {spec.n_ceps} cepstra,",
             f"  frames every {spec.hop_length} samples"]
    return "\n".join(rows)
