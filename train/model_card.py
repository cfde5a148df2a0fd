"""The model card, written by the training run from its own metrics.json.

Every number in the card is read from the run's metrics; nothing is typed in by hand,
so a card cannot disagree with the model it describes.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge.quality import MIN_SECONDS

PCT = 100.0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{PCT * value:.1f} %"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def interval_text(interval: list[float]) -> str:
    """'0.58-0.70': a 95 % interval as the card, the targets and the summary show it."""
    return f"{_num(interval[0], 2)}-{_num(interval[1], 2)}"


def _with_ci(m: Mapping, key: str) -> str:
    """The figure, and its 95 % patient-bootstrap interval when the run measured one."""
    interval = (m.get("ci95") or {}).get(key)
    if m[key] is None or interval is None:
        return _num(m[key])
    return f"{_num(m[key])} ({interval_text(interval)})"


def _row(name: str, m: Mapping) -> str:
    """One table row; ``n`` counts recordings or windows, as the table's head says."""
    return (f"| {name} | {m['n']} ({m['n_abnormal']} abn.) | {_pct(m['se'])} | {_pct(m['sp'])} "
            f"| {_with_ci(m, 'macc')} | {_with_ci(m, 'auc')} | {_pct(m['se_at_sp70'])} |")


TABLE_HEAD = ("| subset | {unit} | Se | Sp | MAcc | AUC | Se at Sp >= 70 % |\n"
              "|---|---|---|---|---|---|---|")


def _table(results: Mapping[str, Mapping], unit: str = "recordings") -> str:
    head = TABLE_HEAD.format(unit=unit)
    return "\n".join([head, *(_row(k, v) for k, v in results.items())])


def _augment(cfg: Mapping) -> str:
    a = cfg["augment"]
    if not a["copies"] and not a["time_shift"] and not a.get("channel"):
        return "none"
    lo, hi = a["snr_db_range"]
    return (f"{a['copies']} altered copies per training recording (speed +-"
            f"{PCT * a['max_speed_change']:.0f} %, gain +-{a['max_gain_db']:g} dB, real noise "
            f"at {lo:g}-{hi:g} dB SNR with probability {a['noise_probability']:g}, noise only "
            "from training-split artifact and noisy recordings), random window phase "
            f"{'on' if a['time_shift'] else 'off'}, random stethoscope response "
            f"{a.get('channel', 0):g} x the between-recording cepstral SD")


def _standardise(cfg: Mapping) -> str:
    if not cfg.get("standardise"):
        return "The model takes the int16 feature values unscaled."
    return ("The model's first layer standardises each cepstrum with constants from the "
            "training split, so it takes the int16 feature values as they are.")


def _targets_section(metrics: Mapping) -> str:
    t = metrics["targets"]
    if "lodo_mean_macc" not in t:  # a run made before the per-database targets
        return "Targets: not recorded in the current form for this run."
    lines = [f"Targets: {describe_targets(t)}.", ""]
    lines += [f"- {'met' if ok else '**not met**'}: {check}{target_figures(t, check)}"
              for check, ok in t["checks"].items()]
    lines += [f"- reported, not a target: {check}{target_figures(t, check, 'reported')}"
              for check in t.get("reported") or {}]
    if any("macc_best" in f for f in (t.get("figures") or {}).values()):
        lines += ["", "\"Any threshold\" is the best MAcc that any threshold gives on that test "
                  "subset, chosen with its labels: where it is below the target, no operating "
                  "point can meet it and the model's ranking (AUC) is what falls short."]
    return "\n".join(lines)


def describe_targets(targets: Mapping) -> str:
    """One sentence naming the targets, for the card and the training summary."""
    gated = [check.removeprefix("test ") for check in targets["checks"]
             if check.startswith("test ")]
    return (f"test MAcc >= {targets['test_macc']} on each of {', '.join(gated)} "
            f"(Se >= {targets['test_se']} on the PhysioNet ones); leave-one-database-out "
            f"MAcc >= {targets['lodo_min_macc']} on each database held out and >= "
            f"{targets['lodo_mean_macc']} on average")


def verdict_lines(targets: Mapping) -> list[str]:
    """MET / MISS per check, then the reported figures, then the count: what
    ``heartsound train`` and ``invoke pipeline`` print at the end."""
    checks = targets["checks"]
    lines = [f"  {'MET ' if ok else 'MISS'} {check}{target_figures(targets, check)}"
             for check, ok in checks.items()]
    lines += [f"  info {check}{target_figures(targets, check, 'reported')}"
              for check in targets.get("reported") or {}]
    missed = sum(not ok for ok in checks.values())
    lines.append(f"targets: {len(checks) - missed} met, {missed} missed (the release check: "
                 "heartsound verify MODEL --run RUN --targets, or invoke targets)")
    return lines


def target_figures(targets: Mapping, check: str, part: str = "figures") -> str:
    """' (MAcc 0.642, 95 % CI 0.57-0.71; Se 91.7 %; any threshold <= 0.752)' for one check,
    '' for older runs; the last part (the subset's best MAcc) only in runs that have it."""
    f = (targets.get(part) or {}).get(check)
    if not f:
        return ""
    ci = f.get("macc_ci95")
    interval = f", 95 % CI {interval_text(ci)}" if ci else ""
    best = f.get("macc_best")
    ceiling = f"; any threshold <= {_num(best)}" if best is not None else ""
    se = f"; Se {_pct(f['se'])}" if f.get("se") is not None else ""
    return f" (MAcc {_num(f['macc'])}{interval}{se}{ceiling})"


def _data_section(metrics: Mapping) -> str:
    lines = ["| source | split | " + " | ".join(metrics["class_names"]) + " |",
             "|---|---|" + "---|" * len(metrics["class_names"])]
    counts = metrics["data"]["counts"]
    for split in ("train", "val", "test"):
        for source, per_class in counts[split].items():
            cells = " | ".join(str(per_class.get(c, 0)) for c in metrics["class_names"])
            lines.append(f"| {source} | {split} | {cells} |")
    return "\n".join(lines)


def _lodo_section(metrics: Mapping) -> str:
    lodo = metrics.get("lodo") or {}
    if not lodo:
        return ("Not run for this model (`--no-lodo`, or a label set without PhysioNet "
                "databases).")
    rows = {f"{name} (held out)": res["test"][name] for name, res in lodo.items()}
    target = metrics["targets"].get("lodo_min_macc")
    return (f"Trained without one PhysioNet database, threshold from the remaining sources' "
            f"validation, tested on the whole held-out database (target MAcc >= {target}).\n\n"
            + _table(rows))


def _familiarity_section(metrics: Mapping) -> str:
    fam = metrics.get("familiarity")
    if not fam:
        return "Not measured for this run (made before the gate existed): the gate is off."
    ref = fam["reference"]
    lines = [f"A recording whose mean cepstra c1..c12 lie more than **{ref['threshold']:.2f}** "
             f"(RMS z-score) from every training database's (the "
             f"{ref['percentile']:g}th percentile of the validation recordings) is `unsure`, "
             "\"unfamiliar stethoscope\" (`edge/familiarity.py`). Reference: "
             + ", ".join(f"{k} ({v['n']})" for k, v in ref["sources"].items()) + ".", ""]
    lodo = {k: v["familiarity"] for k, v in (metrics.get("lodo") or {}).items()
            if "familiarity" in v}
    if lodo:
        lines += ["Leave-one-database-out, each fold's own reference (its training databases) "
                  "and threshold; MAcc on the rest leaves the flagged (unsure) recordings out:",
                  "", _gate_table(lodo, "held out"), ""]
    lines += ["This model's test split: " + ", ".join(
        f"{k} {v['flagged']}/{v['n']}" for k, v in fam["test"].items()) + " flagged."]
    return "\n".join(lines)


def gate_line(gate: Mapping) -> str:
    """One line of the training output: flagged, and MAcc on all and on the rest."""
    rest = gate["rest"] or {}
    return (f"{gate['flagged']}/{gate['n']} flagged (distance > {gate['threshold']:.2f}); "
            f"MAcc all {_num(gate['all']['macc'])}, rest {_num(rest.get('macc'))} "
            f"(Se {_num(rest.get('se'))}, Sp {_num(rest.get('sp'))})")


def _gate_table(rows: Mapping[str, Mapping], what: str) -> str:
    out = [f"| {what} | n | flagged (abnormal) | threshold | MAcc all | MAcc rest | Se rest "
           "| Sp rest | nearest |", "|---|---|---|---|---|---|---|---|---|"]
    for name, g in rows.items():
        rest = g["rest"] or {}
        out.append(f"| {name} | {g['n']} | {g['flagged']} ({g['flagged_abnormal']}) | "
                   f"{g['threshold']:.2f} | {_num(g['all']['macc'])} | "
                   f"{_num(rest.get('macc'))} | {_num(rest.get('se'))} | "
                   f"{_num(rest.get('sp'))} | {g['nearest']} |")
    return "\n".join(out)


def _class_section(metrics: Mapping) -> str:
    overall = metrics["test"]["recording"]["overall"]
    if "classes" not in overall:
        return ""
    cls = overall["classes"]
    recall = ", ".join(f"{c} {_pct(r)}" for c, r in cls["recall"].items())
    return (f"\nCondition view (argmax over classes, test recordings): recall {recall}; "
            f"balanced accuracy {_num(cls['balanced_accuracy'])}.\n")


DEVICES = {
    "pascal-a": "the iStethoscope iPhone app (PASCAL A)",
    "pascal-b": "the DigiScope (PASCAL B)",
    "physionet-a": "Welch Allyn Meditron (PhysioNet a)",
    "physionet-b": "3M Littmann E4000 (PhysioNet b)",
    "physionet-c": "the AUDIOSCOPE (PhysioNet c)",
    "physionet-d": "UHA's stethoscope (PhysioNet d)",
    "physionet-e": "DLUT's stethoscope (PhysioNet e)",
    "physionet-f": "the JABES electronic stethoscope (PhysioNet f)",
}


def _devices(metrics: Mapping) -> str:
    """The recording devices of the sources this run trained on, in a sentence."""
    sources = sorted(metrics["data"]["counts"]["train"])
    return ", ".join(DEVICES.get(s, s) for s in sources)


def render(metrics: Mapping) -> str:
    """The model card as Markdown."""
    rec = metrics["test"]["recording"]
    win = metrics["test"]["window"]
    cfg = metrics["config"]
    sources = ", ".join(s for s in rec if s not in ("overall",))
    timing = metrics["timing"]
    return f"""# Model card: heartsound {metrics['label_set']} model ({metrics['architecture']})

Generated by `heartsound train` from this run's `metrics.json`; do not edit by hand.

## Intended use
Triage of heart-sound recordings at the point of care: **refer** (abnormal) or **do not
refer** (normal), to prioritise a clinician's attention. It is never a diagnosis, and a
"normal" output does not rule out heart disease. Classes: {', '.join(metrics['class_names'])}
(screening decision: abnormal = not `{metrics['normal_class']}`).

## Model
- Architecture `{metrics['architecture']}`: {metrics['model']['summary']};
  {metrics['model']['params']} parameters (float Keras; int8 conversion is a separate step).
- Input: one {metrics['spec']['window_s']:g} s analysis window of the device's fixed-point
  MFCC front end ({metrics['spec']['sample_rate_hz']} Hz, {metrics['spec']['n_ceps']} cepstra,
  Q8.7 int16, normalisation `{metrics['spec']['normalise']}`); windows every
  {metrics['spec']['window_hop_s']:g} s; a recording's score is the mean of its windows'
  P(abnormal). {_standardise(cfg)}
- Training: seed {cfg['seed']}, up to {cfg['epochs']} epochs (kept: {metrics['best_epoch']}),
  Adam lr {cfg['learning_rate']} (cosine decay), batch {cfg['batch_size']}, at most
  {cfg['max_windows_per_recording']} windows per recording per epoch; class and source
  balance by sample weights; augmentation: {_augment(cfg)}.
  Wall time {timing['total_seconds']:.0f} s for the whole run on
  {metrics['environment']['cpus']} CPU cores ({timing['main_seconds']:.0f} s for this model).

## Data
{metrics['data']['description']}

Recordings used (after excluding artifact/unlabelled; patient-level split per source,
split id `{metrics['data']['split_id'][:12]}`):

{_data_section(metrics)}

## Operating point
Threshold **{metrics['threshold']:.4f}** on the recording score, chosen on validation
recordings only: best MAcc among thresholds with validation Se >= {cfg['min_se']}.

## Results on the held-out test split (per recording)
{_table(rec)}
{_class_section(metrics)}
Per 3 s window (same threshold):

{_table(win, "windows")}

Rows: {sources}. In brackets: 95 % intervals from a patient-level bootstrap (test
patients resampled, threshold fixed); a small row's interval is wide, and a target met or
missed inside it is not a finding.
PhysioNet files carry no patient ids, so a split inside one PhysioNet
database may put one subject on both sides: those rows are optimistic. The
leave-one-database-out figures below are the honest estimate for a new stethoscope.

## Leave-one-database-out (PhysioNet)
{_lodo_section(metrics)}

## Unfamiliar stethoscopes
{_familiarity_section(metrics)}

## Against the targets
{_targets_section(metrics)}

## Known limits
- Devices: {_devices(metrics)}. Other devices, filters or microphones are not covered;
  see the leave-one-database-out rows for the drop to expect on a new one.
- People: adults and children mixed as recorded by the challenges; ages, sex, body habitus
  and recording positions are not annotated, so performance per group is unknown.
- Conditions: PhysioNet's "abnormal" mixes valve disease and coronary artery disease;
  PASCAL labels cover murmur, extra heart sound and extrastole only. Other conditions
  (arrhythmias beyond extrastole, congenital disease in neonates, prosthetic valves) are
  not represented.
- Recordings between {MIN_SECONDS:g} s and {metrics['spec']['window_s']:g} s are looped to
  one window, by the device as in training; shorter ones are left out of training and
  evaluation, and the device answers "unsure: too short" for them.
- Signal quality: artifact recordings are excluded here; the device's quality gate, not
  this model, must answer "retake" for them.
"""
