"""Metrics and the operating point: small arrays whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from train.evaluate import (
    best_macc,
    binary_metrics,
    choose_threshold,
    class_metrics,
    confusion_matrix,
    evaluate_groups,
    meets,
    recording_scores,
    roc_auc,
    se_at_sp,
)


def test_auc_perfect_reversed_and_ties():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    # negatives 0.2, 0.5; positives 0.5 (beats 0.2, ties 0.5), 0.9 (beats both): 3.5 / 4
    assert roc_auc(y, np.array([0.2, 0.5, 0.5, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 10, 60) / 10  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_binary_metrics_counts():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1])
    m = binary_metrics(y, s, 0.5)
    assert m["confusion"] == [[3, 1], [1, 3]]
    assert (m["se"], m["sp"], m["macc"]) == (0.75, 0.75, 0.75)
    assert m["n"] == 8 and m["n_abnormal"] == 4
    only_normal = binary_metrics(np.zeros(3), np.array([0.1, 0.6, 0.2]), 0.5)
    assert only_normal["se"] is None and only_normal["macc"] is None
    assert only_normal["sp"] == pytest.approx(2 / 3)


def test_se_at_sp():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1])
    # Sp >= 0.75 allows one false positive (0.6): threshold 0.6 catches 3 of 4
    assert se_at_sp(y, s, 0.75) == 0.75
    assert se_at_sp(y, s, 1.0) == 0.75  # threshold 0.7: no false positive
    assert se_at_sp(y, s, 0.0) == 1.0


def test_best_macc_is_the_ceiling_of_every_threshold():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1])
    # threshold 0.7: Se 3/4, Sp 4/4; no other threshold does better
    assert best_macc(y, s) == pytest.approx(0.875)
    assert binary_metrics(y, s, 0.5)["macc_best"] == pytest.approx(0.875)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    s = rng.integers(0, 12, 80) / 12  # ties
    every = [binary_metrics(y, s, t)["macc"] for t in [*np.unique(s), np.inf]]
    assert best_macc(y, s) == pytest.approx(max(every))
    assert best_macc(np.ones(4), np.arange(4.0)) is None


def test_threshold_favours_sensitivity():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.2, 0.1])
    # Se >= 0.75 is reachable at 0.7 (Sp 1.0): best MAcc 0.875, threshold between 0.6 and 0.7
    assert choose_threshold(y, s, min_se=0.75) == pytest.approx(0.65)
    # Se 1.0 needs the threshold at 0.2: everything at or above 0.2 is abnormal
    t = choose_threshold(y, s, min_se=1.0)
    assert 0.1 < t <= 0.2
    assert binary_metrics(y, s, t)["se"] == 1.0


def test_threshold_tie_goes_to_the_lower_one():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.8, 0.6, 0.4, 0.2])
    # thresholds 0.8 -> (Se .5, Sp 1) MAcc .75; 0.4 -> (1, .5) MAcc .75: take the lower
    assert choose_threshold(y, s, min_se=0.5) == pytest.approx(0.3)


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError):
        choose_threshold(np.ones(3), np.array([0.1, 0.2, 0.3]))


def test_recording_scores_mean_of_windows():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    rec = np.array([0, 0, 1, 1])
    out = recording_scores(probs, rec, 2)
    assert out == pytest.approx(np.array([[0.8, 0.2], [0.3, 0.7]]))
    with pytest.raises(ValueError):
        recording_scores(probs, rec, 3)  # recording 2 has no window


def test_confusion_and_class_metrics():
    y = np.array([0, 0, 1, 2, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 2, 2, 0]]
    assert confusion_matrix(y, probs.argmax(1), 3).tolist() == [[1, 1, 0], [0, 1, 0],
                                                                 [1, 0, 2]]
    m = class_metrics(y, probs, ["normal", "murmur", "extrahls"])
    assert m["recall"] == {"normal": 0.5, "murmur": 1.0, "extrahls": pytest.approx(2 / 3)}
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)


def test_evaluate_groups_per_source_and_overall():
    y = np.array([0, 1, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    res = evaluate_groups(y, probs, ["a", "a", "b", "b", "b"], 0.5, ["normal", "abnormal"])
    assert set(res) == {"a", "b", "overall"}
    assert res["a"]["macc"] == 1.0
    assert (res["b"]["se"], res["b"]["sp"]) == (0.5, 0.0)
    assert res["overall"]["confusion"] == [[1, 1], [1, 2]]
    assert meets(res["a"], 0.8, 0.85) and not meets(res["b"], 0.2, 0.85)


def _scored(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    return y, rng.random(n) + 0.6 * y


def test_weighted_auc_with_unit_weights_is_the_auc():
    from train.evaluate import _weighted_auc

    y, s = _scored(50, 0)
    s = np.round(s, 1)  # ties
    weights = np.ones((3, len(y)))
    assert _weighted_auc(y, s, weights) == pytest.approx([roc_auc(y, s)] * 3)
    # weight 2 on one recording = that recording listed twice
    w = np.ones(len(y))
    w[0] = 2
    twice = np.concatenate([[0], np.arange(len(y))])
    assert _weighted_auc(y, s, w[None])[0] == pytest.approx(roc_auc(y[twice], s[twice]))


def test_bootstrap_interval_holds_the_figure_and_narrows_with_more_patients():
    from train.evaluate import bootstrap_ci

    y, s = _scored(400, 1)
    few = bootstrap_ci(y[:40], s[:40], 0.8, [str(i) for i in range(40)])
    many = bootstrap_ci(y, s, 0.8, [str(i) for i in range(400)])
    point = binary_metrics(y, s, 0.8)
    for key in ("se", "sp", "macc", "auc"):
        lo, hi = many[key]
        assert lo <= point[key] <= hi
        assert hi - lo < few[key][1] - few[key][0]
    assert bootstrap_ci(y, s, 0.8, [str(i) for i in range(400)]) == many  # seeded


def test_bootstrap_resamples_patients_not_recordings():
    from train.evaluate import bootstrap_ci

    y, s = _scored(60, 2)
    per_patient = bootstrap_ci(y, s, 0.6, [str(i) for i in range(60)])
    # each patient recorded 4 times with the same result: the evidence is still 60
    # patients, so the patient-level interval is exactly the one above ...
    y4, s4, g4 = np.repeat(y, 4), np.repeat(s, 4), np.repeat([str(i) for i in range(60)], 4)
    assert bootstrap_ci(y4, s4, 0.6, g4) == per_patient
    # ... while treating the 240 recordings as independent would claim more certainty
    naive = bootstrap_ci(y4, s4, 0.6, [str(i) for i in range(240)])
    assert naive["macc"][1] - naive["macc"][0] < per_patient["macc"][1] - per_patient["macc"][0]


def test_bootstrap_one_class_has_no_interval_and_groups_reach_evaluate_groups():
    from train.evaluate import bootstrap_ci

    assert bootstrap_ci(np.zeros(5), np.arange(5.0), 0.5, list("abcde")) == {
        "se": None, "sp": None, "macc": None, "auc": None}
    y, s = _scored(30, 3)
    probs = np.stack([1 - s / 2, s / 2], axis=1)
    res = evaluate_groups(y.astype(int), probs, ["x"] * 30, 0.3, ["normal", "abnormal"],
                          groups=[str(i) for i in range(30)])
    assert set(res["x"]["ci95"]) == {"se", "sp", "macc", "auc"}
    assert "ci95" not in evaluate_groups(y.astype(int), probs, ["x"] * 30, 0.3,
                                         ["normal", "abnormal"])["x"]


def test_target_line_names_the_ceiling_only_when_the_run_has_it():
    from train.model_card import target_figures

    figures = {"macc": 0.5, "se": 1.0, "macc_ci95": [0.5, 0.5], "macc_best": 0.685}
    line = target_figures({"figures": {"lodo physionet-a": figures}}, "lodo physionet-a")
    assert line == " (MAcc 0.500, 95 % CI 0.50-0.50; Se 100.0 %; any threshold <= 0.685)"
    older = {k: v for k, v in figures.items() if k != "macc_best"}
    assert "any threshold" not in target_figures({"figures": {"x": older}}, "x")
