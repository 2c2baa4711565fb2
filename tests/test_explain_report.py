"""SHAP from the boosters' native paths, the files it writes, and report.html in a real browser."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
import shap

from censo_forecast import explain, models, pipeline, report
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
    np.testing.assert_allclose(b_vote + v_vote.sum(axis=1), (learners["LightGBM"].predict_change(X) + learners["XGBoost"].predict_change(X)) / 2, atol=1e-3)


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


@pytest.mark.slow
def test_report_is_self_contained(run_out):
    text = (run_out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # per stage: national fan chart, states' fans, error by horizon, totals, error by size; 12 SHAP plots
    assert text.count("data:image/png;base64,") == 5 * 2 + 12
    assert 'id="metrics"' in text and "IN_INF_CRE" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
@pytest.mark.slow
def test_report_in_a_real_browser(run_out, tmp_path):
    from playwright.sync_api import sync_playwright

    results = pl.read_csv(run_out / "resultados_finais.csv")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        problems = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("request", lambda req: problems.append(f"network: {req.url}") if not req.url.startswith(("file:", "data:")) else None)
        page.goto((run_out / "report.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.alt])")
        rows = page.eval_on_selector_all("#metrics tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
        by_horizon = page.eval_on_selector_all("#horizons tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
        forecast_rows = page.eval_on_selector_all("#forecast tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
        order = page.eval_on_selector_all("section h2", "hs => hs.map(h => h.closest('section').id || h.textContent)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) == 22 and all(done and width > 0 for done, width, _ in images), images
    assert order.index("forecast-section") < order.index("horizons-section") < order.index("metrics-section")  # the forecast first
    horizons = sorted(results["horizonte"].unique().to_list())
    assert len(forecast_rows) == 2 * len(horizons) and [r[1] for r in forecast_rows[:5]] == [str(2025 + h) for h in horizons]
    chosen = results.filter(pl.col("Escolhido")).sort("etapa", "horizonte")
    assert len(by_horizon) == chosen.height
    for cells, expected in zip(by_horizon, chosen.iter_rows(named=True)):
        assert (cells[0], int(cells[1]), cells[2]) == (expected["etapa"], expected["horizonte"], expected["modelo"])
        assert float(cells[3]) == pytest.approx(expected["MAE_Media_CV"], abs=5e-4)
    assert problems == []
    assert len(rows) == results.height
    for cells, expected in zip(rows, results.iter_rows(named=True)):
        assert cells[0] == expected["etapa"] and cells[1] == expected["modelo"]
        assert float(cells[results.columns.index("MAE_Media_CV")]) == pytest.approx(expected["MAE_Media_CV"], abs=5e-5)
        assert float(cells[results.columns.index("Skill_MAE_vs_Persistencia")]) == pytest.approx(expected["Skill_MAE_vs_Persistencia"], abs=5e-5)
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_report_command_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="resultados_finais.csv not found"):
        report.build_report(tmp_path)
