"""SHAP from the boosters' native paths and the files it writes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import shap

from censo_forecast import explain, models, pipeline
from censo_forecast.config import ModelSettings, load_settings
from censo_forecast.features import FEATURES
from censo_forecast.validation import LastFold

FAST = ModelSettings(n_estimators=30, num_leaves=15, max_depth=4)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(3)
    X = (rng.random((400, len(FEATURES))) * 40).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing lags, as in real rows
    y = np.nan_to_num(X[:, 0]) * 0.95 + 3 * (np.nan_to_num(X[:, 5]) > 20) + rng.normal(0, 1, 400)
    lgbm = models.ChangeRegressor("LightGBM", 0, FAST, n_jobs=1).fit(X, y)
    xgb = models.ChangeRegressor("XGBoost", 0, FAST, n_jobs=1).fit(X, y)
    return X, {"LightGBM": lgbm, "XGBoost": xgb, "Voting": models.Voting([lgbm, xgb])}


@pytest.mark.parametrize("name", ["LightGBM", "XGBoost"])
def test_native_contributions_match_tree_explainer_and_add_up(fitted, name):
    X, learners = fitted
    values, base = explain.contributions(learners[name], X)
    np.testing.assert_allclose(base + values.sum(axis=1), learners[name].predict_change(X), rtol=1e-4, atol=1e-3)
    try:
        reference = shap.TreeExplainer(learners[name].booster_).shap_values(X)
    except ValueError as exc:  # shap < 0.50 (the last for Python 3.10) cannot read XGBoost >= 3.1 models
        if name == "XGBoost" and "could not convert string to float" in str(exc):
            pytest.skip(f"shap {shap.__version__} cannot load XGBoost {__import__('xgboost').__version__} models: {exc}")
        raise
    np.testing.assert_allclose(values, reference, rtol=1e-3, atol=1e-3)


def test_voting_values_are_the_mean_of_its_two_models(fitted):
    X, learners = fitted
    v_vote, b_vote = explain.contributions(learners["Voting"], X)
    v_l, b_l = explain.contributions(learners["LightGBM"], X)
    v_x, b_x = explain.contributions(learners["XGBoost"], X)
    np.testing.assert_allclose(v_vote, (v_l + v_x) / 2)
    np.testing.assert_allclose(
        b_vote + v_vote.sum(axis=1), (learners["LightGBM"].predict_change(X) + learners["XGBoost"].predict_change(X)) / 2, atol=1e-3
    )


def test_explain_stage_writes_plots_and_importance(fitted, tmp_path):
    X, learners = fitted
    table = explain.explain_stage("IN_MED", LastFold(2024, learners, X), tmp_path, sample=150)
    for kind in ("summary", "bar"):
        for m in ("LightGBM", "XGBoost", "Voting"):
            png = tmp_path / f"SHAP_{kind}_IN_MED_{m}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert set(table["modelo"]) == {"LightGBM", "XGBoost", "Voting"}
    assert (table["n_rows"] == 150).all() and (table["ano_origem"] == 2024).all()
    top = table.filter(pl.col("modelo") == "LightGBM").sort("mean_abs_shap", descending=True)
    # in change space the synthetic target moves with feature 5 (y - anchor = 3 * [X5 > 20] - 0.05 * anchor)
    assert top["feature"][0] == FEATURES[5] == "teachers_lag3" and top["feature_label"][0] == "teachers 3 years ago"


def test_explain_refuses_what_it_cannot_explain(fitted):
    X, _ = fitted
    with pytest.raises(TypeError, match="cannot explain Persistence"):
        explain.contributions(models.Persistence(0), X)


@pytest.mark.slow
def test_run_writes_shap_files_for_every_stage_and_model(run_out):
    importance = pl.read_csv(run_out / "shap" / "shap_importance.csv")
    assert set(importance.select(pl.concat_str("etapa", "modelo", separator="/")).to_series()) == {
        f"{s}/{m}" for s in ("IN_INF_CRE", "IN_MED") for m in ("LightGBM", "XGBoost", "Voting")}
    assert len(list((run_out / "shap").glob("SHAP_*.png"))) == 12


@pytest.mark.slow
def test_shap_failure_is_an_error_and_a_nonzero_exit(small_census, tmp_path, monkeypatch):
    raw, _ = small_census

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(explain, "explain_stage", broken)
    s = load_settings(None, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", offline=True,
                      device="cpu", stages=["IN_MED"], min_train_years=12, jobs=1, model={"n_estimators": 10})
    with pytest.raises(pipeline.PipelineError, match="SHAP failed for IN_MED: RuntimeError: boom"):
        pipeline.run(s)
    assert "SHAP explanation failed" in (tmp_path / "out" / "execution_log.txt").read_text()
