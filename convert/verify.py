"""Verification of an int8 model against its float original and against TFLite Micro.

What a screening device promises rests on three measured claims, each on the run's real
validation and test recordings (never random inputs):

1. **The MCU computes what the Pi computes.** Convolutional models: TFLite Micro's int8
   outputs equal the device's LiteRT path (reference kernels) on every window (both are
   TFLite's reference integer arithmetic). Recurrent models: TFLite Micro's integer LSTM
   rounds differently (../shared/docs/TOOLCHAIN_FACTS.md), so the share of identical
   windows is reported and the requirement is a largest difference of 1 LSB. For every
   model the recording decisions of the device's LiteRT path and of TFLite Micro must be
   equal.
2. **Quantisation costs (almost) nothing clinically.** Recording-level MAcc of the int8
   model (the device's own path: :class:`edge.interpreter.Classifier`, LiteRT reference
   kernels) within ``max_macc_diff`` (1 point) of the float Keras model, on validation and
   on test overall; per source the figures are reported (a 9-recording source moves 11
   points per flipped recording, so it cannot carry a 1-point requirement).
3. **Older Pis agree.** tflite-runtime 2.14, where its environment exists, gives the same
   int8 outputs as the device's LiteRT path on every window.

Recording score and decision follow :mod:`edge.decision`: mean of window probabilities,
P(abnormal) = 1 - P(normal), abnormal at or above the model's threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as pkg_metadata
from pathlib import Path

import numpy as np

from convert.bias_correction import summary as bias_summary
from convert.eval_set import SPLITS, EvalSet, load_eval_set
from convert.interpreter_runs import (
    float_inputs,
    run_float,
    run_tflite_runtime,
    run_tflm_isolated,
    tflite_runtime_python,
)
from convert.ops import list_ops
from convert.run_folder import RunFolder
from convert.tflm import compare, run_litert
from edge.decision import normal_index
from edge.errors import ModelError
from edge.interpreter import Classifier, model_bytes
from edge.model_meta import ModelMeta, check_spec, read_model_meta
from train.evaluate import evaluate_groups, recording_scores, screening_score

REPORT_FORMAT = "heartsound-verify/1"
MAX_MACC_DIFF = 0.01
"""Largest allowed |MAcc(int8) - MAcc(float)| on val and on test (1 point)."""
AIM_MACC_DIFF = 0.005
RECURRENT_OPS = frozenset({"UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                           "UNIDIRECTIONAL_SEQUENCE_RNN", "LSTM", "WHILE"})
MAX_RECURRENT_LSB = 1
"""Largest int8 output difference allowed between TFLite Micro's integer LSTM and LiteRT's,
which round differently (../shared/docs/TOOLCHAIN_FACTS.md)."""
THRESHOLD_TOLERANCE = 1e-9
AUC_TOLERANCE = 1e-9
PAIRS = (
    ("litert_device_vs_tflm", "LiteRT (device) vs TFLite Micro", "device", "tflm"),
    ("litert_optimised_vs_tflm", "LiteRT optimised vs TFLite Micro", "optimised", "tflm"),
    ("tflite_runtime_vs_litert_device", "tflite-runtime vs LiteRT (device)",
     "tflite_runtime", "device"),
)
"""Interpreter pairs compared window by window. The device path (edge.interpreter) runs
the reference kernels; the optimised built-in kernels are shown for information, as the
reason the device does not use them."""


@dataclass(frozen=True)
class Outputs:
    """Every execution's outputs on the same windows: float probabilities and int8 codes."""

    float_probs: np.ndarray
    int8: dict[str, np.ndarray]  # "device", "optimised", "tflm", "tflite_runtime"
    probs: dict[str, np.ndarray]  # dequantised int8 outputs, same keys
    tflite_runtime: str | None  # its version text, None when not installed


# ----------------------------------------------------------------------------- checks


def check_model_matches_run(meta: ModelMeta, run: RunFolder) -> None:
    """Refuse a model that was not converted from this run (spec, classes, threshold)."""
    check_spec(meta, run.spec)
    if list(meta.class_names) != run.class_names:
        raise ModelError(f"{meta.name}: classes {list(meta.class_names)} but run {run.path} "
                         f"trained {run.class_names}; verify it against its own run")
    if abs(meta.threshold - run.threshold) > THRESHOLD_TOLERANCE:
        raise ModelError(f"{meta.name}: threshold {meta.threshold:.6g} but run {run.path} chose "
                         f"{run.threshold:.6g}; it was converted from another run")
    ours = meta.training.get("split_id")
    theirs = run.metrics.get("data", {}).get("split_id")
    if ours and theirs and ours != theirs:
        raise ModelError(f"{meta.name}: trained on split {ours[:12]}, run {run.path} has "
                         f"{theirs[:12]}; verify it against its own run")


def is_recurrent(ops: Sequence[str]) -> bool:
    return any(op in RECURRENT_OPS for op in ops)


# ---------------------------------------------------------------------------- running


def run_all(model_path: Path, run: RunFolder, evals: EvalSet,
            with_tflite_runtime: bool = True) -> Outputs:
    """Float, LiteRT (device Classifier), LiteRT optimised kernels, TFLite Micro,
    tflite-runtime: all on the val+test windows, int8 ones on identical int8 inputs."""
    data = model_bytes(model_path)
    device = Classifier(data, backend="ai_edge_litert")
    q = device.quantise(evals.windows)
    int8 = {"device": np.stack([device.invoke(w) for w in q]),
            "optimised": run_litert(data, q, kernels="builtin"),
            "tflm": run_tflm_isolated(model_path, q)}
    python = tflite_runtime_python() if with_tflite_runtime else None
    runtime_label = None
    if python is not None:
        int8["tflite_runtime"], runtime_label = run_tflite_runtime(python, model_path, q)
    probs = {k: device.output_quant.dequantise(v).astype(np.float64) for k, v in int8.items()}
    return Outputs(run_float(run.model_path, float_inputs(run, evals.windows, q, device)),
                   int8, probs, runtime_label)


# ---------------------------------------------------------------------------- figures


def _rec_probs(window_probs: np.ndarray, evals: EvalSet) -> np.ndarray:
    return recording_scores(window_probs, evals.recording, len(evals))


def parity_figures(out: Outputs, evals: EvalSet) -> dict:
    """Window-level agreement of each interpreter pair, overall and per source."""
    win_source = np.asarray(evals.sources)[evals.recording]
    figures = {}
    for key, _, a, b in PAIRS:
        if a not in out.int8 or b not in out.int8:
            figures[key] = None
            continue
        entry = compare(out.int8[a], out.int8[b]).to_dict()
        entry["by_source"] = {
            s: compare(out.int8[a][win_source == s], out.int8[b][win_source == s]).to_dict()
            for s in sorted(set(evals.sources))}
        figures[key] = entry
    return figures


def decision_figures(out: Outputs, evals: EvalSet, threshold: float, normal: int) -> dict:
    """Recording decisions of each execution and where they differ."""
    scores = {"float": screening_score(_rec_probs(out.float_probs, evals), normal)}
    scores |= {k: screening_score(_rec_probs(p, evals), normal) for k, p in out.probs.items()}
    decided = {k: s >= threshold for k, s in scores.items()}

    def differ(a: str, b: str) -> dict | None:
        if a not in decided or b not in decided:
            return None
        idx = np.flatnonzero(decided[a] != decided[b])
        return {"recordings": len(evals), "differ": int(idx.size),
                "names": [evals.names[i] for i in idx],
                "max_score_diff": float(np.max(np.abs(scores[a] - scores[b]), initial=0.0)),
                "mean_score_diff": float(np.mean(scores[b] - scores[a]))}

    return {"int8_litert_vs_tflm": differ("device", "tflm"),
            "int8_optimised_vs_tflm": differ("optimised", "tflm"),
            "tflite_runtime_vs_litert": differ("tflite_runtime", "device"),
            "float_vs_int8": differ("float", "device")}


def recording_rows(out: Outputs, evals: EvalSet, normal: int,
                   classes: Sequence[str]) -> list[dict]:
    """Per recording: where it comes from, its label and P(abnormal) of every execution
    (what a reader needs to see which recordings quantisation moved, and by how much)."""
    scores = {"float": screening_score(_rec_probs(out.float_probs, evals), normal)}
    scores |= {k: screening_score(_rec_probs(p, evals), normal) for k, p in out.probs.items()}
    windows = np.bincount(evals.recording, minlength=len(evals))
    return [{"name": evals.names[i], "split": evals.splits[i], "source": evals.sources[i],
             "label": classes[int(evals.y[i])], "windows": int(windows[i]),
             "p_abnormal": {k: float(v[i]) for k, v in scores.items()}}
            for i in range(len(evals))]


def metric_figures(out: Outputs, evals: EvalSet, threshold: float,
                   classes: Sequence[str]) -> dict:
    """Recording-level Se/Sp/MAcc/AUC per split and source: float, int8 (device), TFLM."""
    runs = {"float": out.float_probs, "int8": out.probs["device"], "tflm": out.probs["tflm"]}
    figures: dict = {}
    for split in SPLITS:
        mask = evals.split_mask(split)
        if not mask.any():
            continue
        figures[split] = {}
        for name, window_probs in runs.items():
            rec = _rec_probs(window_probs, evals)[mask]
            groups = evaluate_groups(evals.y[mask], rec, np.asarray(evals.sources)[mask],
                                     threshold, list(classes),
                                     groups=np.asarray(evals.groups)[mask])
            figures[split][name] = _with_datasets(groups, evals, mask, rec, threshold, classes)
    return figures


def _with_datasets(groups: dict, evals: EvalSet, mask: np.ndarray, rec: np.ndarray,
                   threshold: float, classes: Sequence[str]) -> dict:
    """Per data set (pascal, physionet2016) too, as training's metrics report them."""
    datasets = np.asarray(evals.datasets)[mask]
    if len(set(datasets.tolist())) < 2:
        return groups
    extra = evaluate_groups(evals.y[mask], rec, datasets, threshold, list(classes),
                            groups=np.asarray(evals.groups)[mask])
    extra.pop("overall")
    overall = groups.pop("overall")
    return groups | extra | {"overall": overall}


def macc_diffs(metrics: dict) -> dict[str, float | None]:
    """|MAcc(int8) - MAcc(float)| overall per split (None when a class is absent)."""
    out = {}
    for split, runs in metrics.items():
        a, b = runs["int8"]["overall"]["macc"], runs["float"]["overall"]["macc"]
        out[split] = None if a is None or b is None else abs(a - b)
    return out


def reproduces_training(metrics: dict, run: RunFolder) -> bool | None:
    """Does the float model rank the run's test recordings as training did (same
    recordings, same data, same weights)? AUC, not the confusion matrix: the reloaded
    model's scores were seen to move by ~3e-4 from the in-training ones (a 1-epoch model
    whose scores crowd the threshold flipped one recording), which no ranking notices."""
    recorded = run.metrics.get("test", {}).get("recording", {}).get("overall")
    mine = metrics.get("test", {}).get("float", {}).get("overall")
    if not recorded or not mine or recorded.get("auc") is None or mine.get("auc") is None:
        return None
    return recorded["n"] == mine["n"] and abs(recorded["auc"] - mine["auc"]) < AUC_TOLERANCE


# ------------------------------------------------------------------------ requirements


def requirements(report: dict, max_macc_diff: float) -> list[dict]:
    """Each requirement with its verdict and the measured figure behind it."""
    reqs = []
    parity = report["parity"]
    ref = parity["litert_device_vs_tflm"]
    measured = f"{ref['identical']}/{ref['windows']} identical, max {ref['max_lsb']} LSB"
    if not report["recurrent"]:
        reqs.append(_req("TFLite Micro = LiteRT (device) on every window (CNN)",
                         ref["identical"] == ref["windows"], measured))
    else:
        reqs.append(_req(f"TFLite Micro within {MAX_RECURRENT_LSB} LSB of LiteRT (device) "
                         "(recurrent)", ref["max_lsb"] <= MAX_RECURRENT_LSB, measured))
    dec = report["decisions"]["int8_litert_vs_tflm"]
    reqs.append(_req("same decision on every recording: TFLite Micro vs LiteRT (device)",
                     dec["differ"] == 0, f"{dec['differ']} of {dec['recordings']} differ"))
    for split, diff in report["macc_diff"].items():
        shown = "undefined (one class only)" if diff is None else f"{100 * diff:.2f} points"
        reqs.append(_req(f"{split} MAcc int8 within {100 * max_macc_diff:g} point(s) of float",
                         diff is not None and diff <= max_macc_diff + 1e-12, shown))
    runtime = parity["tflite_runtime_vs_litert_device"]
    if runtime is not None:
        reqs.append(_req("tflite-runtime 2.14 = LiteRT (device) on every window",
                         runtime["identical"] == runtime["windows"],
                         f"{runtime['identical']}/{runtime['windows']} identical"))
    return reqs


def _req(name: str, ok: bool, measured: str) -> dict:
    return {"name": name, "ok": bool(ok), "measured": measured}


# ---------------------------------------------------------------------------- report


def verify(model_path: str | Path, run: RunFolder, *, data: Sequence[Path] | None = None,
           cache_dir: Path | None = None, max_macc_diff: float = MAX_MACC_DIFF,
           with_tflite_runtime: bool = True, size: dict | None = None,
           progress: bool = False) -> dict:
    """The whole verification as a JSON-able report (``report["pass"]`` says it all)."""
    model_path = Path(model_path)
    meta = read_model_meta(model_path)
    check_model_matches_run(meta, run)
    data_bytes = model_bytes(model_path)
    ops = list_ops(data_bytes)
    evals = load_eval_set(run, data, cache_dir, progress=progress)
    out = run_all(model_path, run, evals, with_tflite_runtime)
    normal = normal_index(meta.class_names, meta.normal_class)
    metrics = metric_figures(out, evals, meta.threshold, meta.class_names)
    counts = evals.window_counts()
    report = {
        "format": REPORT_FORMAT,
        "model": str(model_path),
        "model_sha256": hashlib.sha256(data_bytes).hexdigest(),
        "model_version": meta.version,
        "run": str(run.path),
        "architecture": meta.architecture,
        "recurrent": is_recurrent(ops),
        "ops": ops,
        "class_names": list(meta.class_names),
        "threshold": meta.threshold,
        "interpreters": _versions(out.tflite_runtime),
        "data": {"recordings": {s: int(evals.split_mask(s).sum()) for s in SPLITS},
                 "windows": counts | {"total": int(len(evals.windows))},
                 "sources": sorted(set(evals.sources))},
        "parity": parity_figures(out, evals),
        "decisions": decision_figures(out, evals, meta.threshold, normal),
        "metrics": metrics,
        "macc_diff": macc_diffs(metrics),
        "aim_macc_diff": AIM_MACC_DIFF,
        "float_reproduces_training_metrics": reproduces_training(metrics, run),
        "recordings": recording_rows(out, evals, normal, meta.class_names),
        "size": size,
        "bias_correction": meta.document.get("bias_correction"),
    }
    report["requirements"] = requirements(report, max_macc_diff)
    failed = [r for r in report["requirements"] if not r["ok"]]
    report["pass"] = not failed
    report["reason"] = f"{failed[0]['name']}: {failed[0]['measured']}" if failed else None
    return report


def _versions(tflite_runtime: str | None) -> dict:
    def version(name: str) -> str | None:
        try:
            return pkg_metadata.version(name)
        except pkg_metadata.PackageNotFoundError:
            return None

    return {"ai_edge_litert": version("ai-edge-litert"), "tflite_micro": version("tflite-micro"),
            "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
            "tflite_runtime": tflite_runtime or "not installed (run scripts/setup.sh)"}


# ----------------------------------------------------------------------------- table


def render(report: dict) -> str:
    """The printed report: data, window parity, decisions, metrics, requirements."""
    d = report["data"]
    rows = [f"verify {report['model']} ({report['architecture']}, "
            f"{'recurrent' if report['recurrent'] else 'convolutional'}) on run {report['run']}",
            f"recordings: val {d['recordings']['val']}, test {d['recordings']['test']}; "
            f"windows: val {d['windows']['val']}, test {d['windows']['test']} "
            f"({d['windows']['total']} total); sources {', '.join(d['sources'])}",
            "", f"{'window parity (int8 outputs)':<38}{'identical':>18}{'max LSB':>9}"
            f"{'same argmax':>14}"]
    for key, label, _, _ in PAIRS:
        p = report["parity"][key]
        if p is None:
            rows.append(f"  {label:<36}{'not run: ' + report['interpreters']['tflite_runtime']}")
            continue
        ident = f"{p['identical']}/{p['windows']} {100 * p['identical_share']:.1f}%"
        rows.append(f"  {label:<36}{ident:>18}{p['max_lsb']:>9}"
                    f"{p['same_argmax']:>9}/{p['windows']}")
    rows += ["", "recording decisions (threshold "
             f"{report['threshold']:.4f}, P(abnormal) = mean over windows)"]
    names = {"int8_litert_vs_tflm": "int8 LiteRT (device) vs TFLite Micro",
             "int8_optimised_vs_tflm": "int8 LiteRT optimised vs TFLite Micro",
             "tflite_runtime_vs_litert": "int8 tflite-runtime vs LiteRT",
             "float_vs_int8": "float Keras vs int8 LiteRT"}
    for key, label in names.items():
        dec = report["decisions"][key]
        if dec is not None:
            rows.append(f"  {label:<38}{dec['differ']:>4} of {dec['recordings']} differ, "
                        f"max score diff {dec['max_score_diff']:.4f}, mean "
                        f"{dec['mean_score_diff']:+.4f}")
    rows.append(f"  int8 logit bias at conversion: "
                f"{bias_summary(report.get('bias_correction') or {})}")
    rows += ["", _metrics_header()]
    for split, runs in report["metrics"].items():
        for group in runs["float"]:
            rows.append(_metrics_row(split, group, runs))
    rows.append("  AUC overall float/int8/TFLM (threshold-free ranking): " + "; ".join(
        f"{split} " + "/".join(_fmt(runs[k]["overall"]["auc"]) for k in ("float", "int8", "tflm"))
        for split, runs in report["metrics"].items()))
    rows += ["", "requirements"]
    rows += [f"  {'PASS' if r['ok'] else 'FAIL'}  {r['name']}: {r['measured']}"
             for r in report["requirements"]]
    if report["float_reproduces_training_metrics"] is False:
        rows.append("  note: the float model's test AUC differs from the run's metrics.json "
                    "(other data folders, or another model.keras?)")
    return "\n".join(rows)


def _metrics_header() -> str:
    return (f"{'recording-level':<26}{'n':>4}  {'Se float/int8/TFLM':>20}  "
            f"{'Sp float/int8/TFLM':>20}  {'MAcc float/int8/TFLM':>21}  {'dMAcc':>6}")


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def _metrics_row(split: str, group: str, runs: dict) -> str:
    f, i, t = (runs[k][group] for k in ("float", "int8", "tflm"))

    def triple(key: str) -> str:
        return "/".join(_fmt(x[key]) for x in (f, i, t))

    diff = (None if f["macc"] is None or i["macc"] is None else 100 * (i["macc"] - f["macc"]))
    shown = "  -" if diff is None else f"{diff:+.2f}"
    return (f"  {split + ' ' + group:<24}{f['n']:>4}  {triple('se'):>20}  {triple('sp'):>20}  "
            f"{triple('macc'):>21}  {shown:>6}")
