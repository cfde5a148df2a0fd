"""The targets verdict: per database, never pooled; LODO on each and on average; the
release check adds the device figures. Unit tests of the rules on hand-made figures (the
real run's verdict is checked in test_verify.py and test_train_pipeline.py)."""

from __future__ import annotations

from train.targets import (
    LODO_MEAN_MACC,
    MAX_ARENA_BYTES,
    TEST_MACC,
    TEST_SE,
    release_checks,
    training_targets,
)


def _m(macc: float | None, se: float | None = 0.95) -> dict:
    return {"macc": macc, "se": se, "ci95": {"macc": [0.0, 1.0]}, "macc_best": macc}


def _metrics(**overrides: dict) -> dict:
    test = {"physionet-a": _m(0.85), "physionet-b": _m(0.81), "physionet-d": _m(0.4, 0.2),
            "physionet-e": _m(0.9), "pascal": _m(0.82, 0.5), "physionet2016": _m(0.5),
            "overall": _m(0.5)}
    lodo = {k: {"test": {k: _m(0.8)}} for k in ("physionet-a", "physionet-b",
                                                  "physionet-d", "physionet-e")}
    test.update(overrides.pop("test", {}))
    lodo.update(overrides.pop("lodo", {}))
    return {"test": {"recording": test}, "lodo": lodo, **overrides}


def test_each_database_is_gated_and_the_pooled_figures_only_reported() -> None:
    t = training_targets(_metrics())
    assert all(t["checks"].values())
    assert {"test physionet-a", "test physionet-b", "test physionet-e", "test pascal",
            "lodo physionet-d", "lodo mean"} <= set(t["checks"])
    # d (8 test recordings) and the pooled rows fail every target and still pass the verdict
    assert set(t["reported"]) == {"test physionet-d", "test physionet2016", "test overall"}
    assert not {"test physionet-d", "test physionet2016", "test overall"} & set(t["checks"])


def test_physionet_needs_sensitivity_pascal_does_not() -> None:
    t = training_targets(_metrics(test={"physionet-b": _m(0.85, TEST_SE - 0.01),
                                        "pascal": _m(0.85, 0.1)}))
    assert t["checks"]["test physionet-b"] is False and t["checks"]["test pascal"] is True
    t = training_targets(_metrics(test={"pascal": _m(TEST_MACC - 0.001)}))
    assert t["checks"]["test pascal"] is False


def test_lodo_every_database_and_the_mean() -> None:
    low = {k: {"test": {k: _m(0.66)}} for k in ("physionet-d", "physionet-e")}
    t = training_targets(_metrics(lodo=low))
    assert t["checks"]["lodo physionet-e"] is True          # above 0.65 on its own
    assert t["figures"]["lodo mean"]["macc"] < LODO_MEAN_MACC
    assert t["checks"]["lodo mean"] is False                 # (0.8 * 2 + 0.66 * 2) / 4
    t = training_targets(_metrics(lodo={"physionet-a": {"test": {"physionet-a": _m(None)}}}))
    assert t["checks"]["lodo physionet-a"] is False and t["checks"]["lodo mean"] is False


def test_a_run_without_lodo_or_a_database_checks_what_it_has() -> None:
    metrics = _metrics()
    metrics["lodo"] = {}
    del metrics["test"]["recording"]["physionet-e"]
    t = training_targets(metrics)
    assert "lodo mean" not in t["checks"] and "test physionet-e" not in t["checks"]
    assert all(t["checks"].values())


def test_release_check_adds_the_device_figures() -> None:
    metrics = _metrics(timing={"main_seconds": 400.0})
    report = {"macc_diff": {"val": 0.004, "test": 0.006},
              "size": {"model_bytes": 30000, "arena_bytes": MAX_ARENA_BYTES + 1}}
    checks = release_checks(metrics, report)
    verdict = {name: ok for name, (ok, _) in checks.items()}
    assert verdict["val MAcc int8 vs float within 0.5 points"] is True
    assert verdict["test MAcc int8 vs float within 0.5 points"] is False
    assert verdict["model <= 64 KB"] is True
    assert verdict["TFLite Micro arena <= 48 KB"] is False
    assert verdict["default model trains in < 15 min"] is True
    assert verdict["test physionet-a"] is True
    assert checks["TFLite Micro arena <= 48 KB"][1] == f" ({MAX_ARENA_BYTES + 1} bytes)"
