"""Forecasting core: panel, population and truth, features without leakage, models, metrics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from censo_forecast import features, horizons, machine, models, outputs, results, validation
from censo_forecast.config import ModelSettings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import catalog, ingest
from censo_forecast.learners import ModelFactory
from censo_forecast.panel import build_panel
from censo_forecast.stagedata import LocalStageData

FAST = ModelSettings(n_estimators=25, num_leaves=15, max_depth=4)


def census_rows(rows: list[dict]) -> pl.DataFrame:
    """A hand-made census in the cache schema: every stage count 0 unless given."""
    full = []
    for r in rows:
        base = {c: None for c in catalog.CACHE_SCHEMA}
        base.update({c: 0 for s in catalog.STAGES for c in s.columns})
        base.update({"CO_REGIAO": 3, "CO_UF": 33, "CO_MUNICIPIO": 3303302, "TP_DEPENDENCIA": 3, "TP_LOCALIZACAO": 1,
                     "TP_SITUACAO_FUNCIONAMENTO": 1})
        base.update(r)
        full.append(base)
    return pl.DataFrame(full, schema=catalog.CACHE_SCHEMA)


@pytest.fixture(scope="module")
def small_panel(small_census, tmp_path_factory):
    raw, _ = small_census
    cache = tmp_path_factory.mktemp("cache")
    ingest.ingest(raw, cache)
    return build_panel(ingest.load_cache(cache, ingest.cached_years(cache)))


def test_calendar_gap_is_a_gap_not_a_shifted_lag():
    census = census_rows([
        {"NU_ANO_CENSO": 2015, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 100},
        {"NU_ANO_CENSO": 2016, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 110},
        # 2017 missing from the census
        {"NU_ANO_CENSO": 2018, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 130, "QT_DOC_MED": 10, "QT_TUR_MED": 4},
    ])
    feats = features.stage_rows(build_panel(census), "IN_MED")
    row = feats.filter(pl.col("origin_year") == 2018).row(0, named=True)
    assert row["target_year"] == 2019
    assert row["enrollment_lag1"] == 130 and row["enrollment_lag2"] is None and row["enrollment_lag3"] == 110
    assert row["enrollment_diff1"] is None and row["enrollment_growth1"] is None
    assert row["students_per_teacher"] == pytest.approx(13.0) and row["students_per_class"] == pytest.approx(32.5)
    assert row["years_since_first_seen"] == 3


def test_lags_and_truth_never_cross_schools_and_row_order_does_not_matter():
    """Lags come from row shifts: a neighbouring school's rows must never be taken for this one's."""
    census = census_rows([
        {"NU_ANO_CENSO": 2016, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 70},
        {"NU_ANO_CENSO": 2017, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 80},
        {"NU_ANO_CENSO": 2018, "CO_ENTIDADE": 2, "IN_MED": 1, "QT_MAT_MED": 300},  # rows right after school 1's
        {"NU_ANO_CENSO": 2019, "CO_ENTIDADE": 2, "IN_MED": 1, "QT_MAT_MED": 310},
    ])
    panel = build_panel(census)
    data = features.stage_rows(panel, "IN_MED")
    rows = {(r["CO_ENTIDADE"], r["origin_year"]): r for r in data.iter_rows(named=True)}
    first_of_2 = rows[2, 2018]
    assert first_of_2["enrollment_lag2"] is None and first_of_2["enrollment_lag3"] is None
    assert first_of_2["offered_years_last3"] == 1
    assert rows[1, 2017]["y_true_1"] == 0.0  # school 1 left the census; school 2's 2018 is not its truth
    assert rows[1, 2017]["enrollment_lag2"] == 70 and rows[1, 2016]["y_true_1"] == 80.0
    shuffled = panel[[2, 0, 3, 1]]
    assert not shuffled.equals(panel)
    assert features.stage_rows(shuffled, "IN_MED").equals(data)


def test_area_totals_count_every_active_school_with_enrollment():
    """Municipal totals: active schools' stage enrollment (one not flagging the stage but
    reporting students included), offering schools counted, inactive ones left out."""
    rows = []
    for year, scale in ((2019, 1), (2020, 2)):
        rows += [
            {"NU_ANO_CENSO": year, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 100 * scale},
            {"NU_ANO_CENSO": year, "CO_ENTIDADE": 2, "IN_MED": 1, "QT_MAT_MED": 50 * scale},
            {"NU_ANO_CENSO": year, "CO_ENTIDADE": 3, "IN_MED": 0, "QT_MAT_MED": 5},  # flag off, students reported
            {"NU_ANO_CENSO": year, "CO_ENTIDADE": 4, "IN_MED": 0, "QT_MAT_MED": 0},
            {"NU_ANO_CENSO": year, "CO_ENTIDADE": 5, "TP_SITUACAO_FUNCIONAMENTO": 2, "IN_MED": 1, "QT_MAT_MED": 999},
            {"NU_ANO_CENSO": year, "CO_ENTIDADE": 6, "CO_MUNICIPIO": 3304557, "IN_MED": 1, "QT_MAT_MED": 7},
        ]
    feats = features.stage_rows(build_panel(census_rows(rows)), "IN_MED")
    row = feats.filter((pl.col("CO_ENTIDADE") == 1) & (pl.col("origin_year") == 2020)).row(0, named=True)
    assert row["muni_stage_total_lag1"] == 305 and row["muni_stage_schools_lag1"] == 2
    assert row["muni_stage_growth"] == pytest.approx(305 / 155 - 1)
    assert row["state_stage_total_lag1"] == 312 and row["school_share_of_muni"] == pytest.approx(200 / 305)


def test_population_and_truth_rule():
    y0 = [  # all offer high school in 2020
        {"NU_ANO_CENSO": 2020, "CO_ENTIDADE": c, "IN_MED": 1, "QT_MAT_MED": 50} for c in (1, 2, 3, 4, 5)
    ] + [
        {"NU_ANO_CENSO": 2020, "CO_ENTIDADE": 6, "IN_MED": 0, "QT_MAT_MED": 0},  # does not offer it
        {"NU_ANO_CENSO": 2020, "CO_ENTIDADE": 7, "TP_SITUACAO_FUNCIONAMENTO": 2, "IN_MED": None, "QT_MAT_MED": None},
    ]
    y1 = [
        {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 55},  # continues
        {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 2, "TP_SITUACAO_FUNCIONAMENTO": 3, "IN_MED": None, "QT_MAT_MED": None},  # closed
        {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 3, "IN_MED": 0, "QT_MAT_MED": 0},  # dropped the stage
        # school 4 vanished from the census
        {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 5, "IN_MED": 1, "QT_MAT_MED": None},  # offers, count blank
        {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 6, "IN_MED": 1, "QT_MAT_MED": 40},  # new offering: not forecast
        {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 7, "IN_MED": 1, "QT_MAT_MED": 30},  # reopened: was inactive
    ]
    panel = build_panel(census_rows(y0 + y1))
    data = features.stage_rows(panel, "IN_MED")
    truth = dict(data.filter(pl.col("target_year") == 2021).select("CO_ENTIDADE", "y_true_1").iter_rows())
    assert truth == {1: 55.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0}


def test_truth_at_every_horizon():
    """y_true_h is the stage's enrollment h years after the origin: 0 once the school closed,
    dropped the stage or left the census, and null beyond the last census year."""
    def year(y, schools):
        return [{"NU_ANO_CENSO": y, "CO_ENTIDADE": c, **row} for c, row in schools.items()]

    offers = lambda n: {"IN_MED": 1, "QT_MAT_MED": n}  # noqa: E731
    census = census_rows(
        year(2019, {1: offers(50), 2: offers(40), 3: offers(30)})
        + year(2020, {1: offers(55), 2: {"IN_MED": 0, "QT_MAT_MED": 0}, 3: offers(31)})  # 2 drops it
        + year(2021, {1: offers(60), 2: offers(45)})  # 2 offers it again; 3 left the census
        + year(2022, {1: offers(62), 3: offers(33)}))  # 3 is back
    data = features.stage_rows(build_panel(census), "IN_MED", horizons=4)
    got = {
        r["CO_ENTIDADE"]: [r[f"y_true_{h}"] for h in range(1, 5)] for r in data.filter(pl.col("origin_year") == 2019).iter_rows(named=True)
    }
    assert got == {1: [55.0, 60.0, 62.0, None], 2: [0.0, 45.0, 0.0, None], 3: [31.0, 0.0, 33.0, None]}
    last = data.filter(pl.col("origin_year") == 2022)  # the forecast's rows: every truth unknown
    assert last.height == 2 and all(last[f"y_true_{h}"].null_count() == 2 for h in range(1, 5))
    # the forecast reads exactly these rows, without truth: one query serves both
    assert features.forecast_rows(build_panel(census), "IN_MED", horizons=4).equals(last.drop(f"y_true_{h}" for h in range(1, 5)))


def _perturb_year(census: pl.DataFrame, year: int, keep: list[str]) -> pl.DataFrame:
    """Change every input of `year` except the `keep` columns."""
    rng = np.random.default_rng(0)
    is_year = pl.col("NU_ANO_CENSO") == year
    changes = []
    for name, dtype in census.schema.items():
        if name in keep or name in ("NU_ANO_CENSO", "CO_ENTIDADE"):
            continue
        if dtype.is_integer():
            noise = pl.Series(rng.integers(1, 41, census.height)).cast(dtype)  # large enough to cross splits
            changes.append(pl.when(is_year).then(pl.col(name).fill_null(0) + noise).otherwise(pl.col(name)).alias(name))
    return census.with_columns(changes)


def test_no_leakage_at_any_horizon(small_panel):
    """For every horizon h, perturb every input of every census year after Y - h (enrollment,
    flags and status included): the h-step predictions for Y must not change."""
    flag, target = "IN_FUND_AI", 2025  # the last year: a multi-table year, its offer flags derived
    census = small_panel.drop("active", "first_year")
    years = list(range(2011, 2026))
    factory = ModelFactory(FAST, models.select_device("cpu"), 1)

    def predictions(panel, origin):
        data = LocalStageData(features.stage_rows(panel, flag, horizons=5), horizons=5)
        cv = validation.walk_forward(data, flag, years, factory, min_train_years=origin - 2010)
        rows = cv.predictions.filter(pl.col("ano_origem") == origin).sort("horizonte", "CO_ENTIDADE")
        return rows.filter(pl.col("NU_ANO_CENSO") == target), rows

    for h in (1, 2, 3, 4, 5):
        origin = target - h
        perturbed = census
        for year in range(origin + 1, 2026):
            perturbed = _perturb_year(perturbed, year, keep=[])
        perturbed = build_panel(perturbed)
        assert not perturbed.filter(pl.col("NU_ANO_CENSO") > origin).equals(small_panel.filter(pl.col("NU_ANO_CENSO") > origin))
        (original, every), (changed, every_changed) = predictions(small_panel, origin), predictions(perturbed, origin)
        assert original.height > 50 and set(original["horizonte"]) == {h}
        for name in models.CENSUS_MODEL_NAMES:
            np.testing.assert_allclose(original[name].to_numpy(), changed[name].to_numpy(), rtol=0, atol=1e-9, err_msg=f"{name} h={h}")
        assert not original["y_true"].equals(changed["y_true"])  # the truth did move: the test could fail
        # every forecast made at that origin (the nearer horizons too) is unchanged
        for name in models.CENSUS_MODEL_NAMES:
            np.testing.assert_allclose(every[name].to_numpy(), every_changed[name].to_numpy(), rtol=0, atol=1e-9)


def test_features_of_origin_ignore_later_years(small_panel):
    """Features for origin o are identical whether or not years after o exist."""
    flag = "IN_MED"
    truth = [features.truth_column(h) for h in range(1, 6)]
    full = features.stage_rows(small_panel, flag, horizons=5).filter(pl.col("origin_year") == 2019).drop(truth)
    cut = features.forecast_rows(small_panel.filter(pl.col("NU_ANO_CENSO") <= 2019), flag, horizons=5)
    assert full.height > 50 and full.equals(cut)


def test_metrics_against_hand_computed_values():
    m = validation.metrics(np.array([0.0, 10.0, 20.0]), np.array([1.0, 8.0, 26.0]))
    assert m["MAE"] == pytest.approx(3.0)
    assert m["RMSE"] == pytest.approx(np.sqrt(41 / 3))
    assert m["R2"] == pytest.approx(1 - 41 / 200)
    assert m["WAPE"] == pytest.approx(9 / 30)


def test_summary_means_skill_and_choice():
    one_year = {"Persistencia": (10, 12), "Deriva": (11, 13), "Coorte": (10, 11), "LightGBM": (8, 10), "XGBoost": (9, 9),
                "Voting": (8.5, 9.0)}
    two_years = {"Persistencia": (14, 16), "Deriva": (15, 15), "Coorte": (13, 13), "LightGBM": (14, 15), "XGBoost": (15, 15),
                 "Voting": (14, 14.5)}
    folds = pl.DataFrame([
        {"etapa": "IN_MED", "modelo": m, "horizonte": h, "NU_ANO_CENSO": y, "MAE": mae, "RMSE": 1.0, "R2": 0.5, "WAPE": 0.1, "n": 10}
        for h, table in ((1, one_year), (2, two_years)) for m, maes in table.items()
        for y, mae in zip((2020, 2021), maes, strict=True)
    ])
    table = results.summarize(folds)
    assert table.columns[:8] == [*outputs.SEED_COLUMNS, "horizonte"]  # the seed's columns first
    row = {(r["modelo"], r["horizonte"]): r for r in table.iter_rows(named=True)}
    assert row["LightGBM", 1]["MAE_Media_CV"] == pytest.approx(9.0)
    assert row["LightGBM", 1]["Skill_MAE_vs_Persistencia"] == pytest.approx(1 - 9 / 11)
    assert row["LightGBM", 1]["Skill_MAE_vs_Coorte"] == pytest.approx(1 - 9 / 10.5)
    assert row["LightGBM", 2]["Skill_MAE_vs_Persistencia"] == pytest.approx(1 - 14.5 / 15)  # against its own horizon
    assert row["Voting", 1]["Escolhido"] and not row["LightGBM", 1]["Escolhido"]  # 8.75 < 9.0
    assert row["Persistencia", 1]["n_folds"] == 2 and row["Persistencia", 1]["n_amostras"] == 20
    assert results.chosen_models(table) == {"IN_MED": {1: "Voting", 2: "Coorte"}}  # chosen per horizon


def test_models_follow_sklearn_conventions_and_voting_is_the_mean():
    rng = np.random.default_rng(1)
    X = rng.random((300, 4)).astype(np.float32) * 50
    y = X[:, 0] * 0.9 + rng.normal(0, 1, 300)
    est = models.ChangeRegressor("LightGBM", anchor=0, settings=FAST, n_jobs=1)
    assert clone(est).get_params()["learner"] == "LightGBM" and not hasattr(est, "booster_")
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert est.fit(X, y) is est and hasattr(est, "booster_")
    xgb = models.ChangeRegressor("XGBoost", anchor=0, settings=FAST, n_jobs=1).fit(X, y)
    vote = models.Voting([est, xgb])
    np.testing.assert_allclose(vote.predict(X), (est.predict(X) + xgb.predict(X)) / 2)
    X_zero = X.copy()
    X_zero[:, 0] = 0
    assert (est.predict(X_zero) >= 0).all()
    assert np.array_equal(models.Persistence(0).fit(X, y).predict(X), X[:, 0].astype(np.float64))
    drift = models.Drift(0).fit(X[:, :1], X[:, 0] * 0.5)
    assert drift.ratio_ == pytest.approx(0.5)


def test_predict_all_gives_voting_its_members_predictions_without_predicting_again(monkeypatch):
    """The walk-forward predicts each fold once per model: Voting's numbers are bit for bit
    its own predict's, from its members' predictions already made, not a second boosting pass."""
    rng = np.random.default_rng(2)
    X = rng.random((300, 4)).astype(np.float32) * 50
    y = X[:, 0] * 0.9 + rng.normal(0, 1, 300)
    lgb, xgb = (models.ChangeRegressor(n, anchor=0, settings=FAST, n_jobs=1).fit(X, y) for n in models.LEARNERS)
    fitted = {"Persistencia": models.Persistence(0).fit(X), "LightGBM": lgb, "XGBoost": xgb,
              "Voting": models.Voting([lgb, xgb])}
    expected = {name: model.predict(X) for name, model in fitted.items()}
    calls = []
    original = models.ChangeRegressor.predict_change
    monkeypatch.setattr(models.ChangeRegressor, "predict_change", lambda self, X: calls.append(self) or original(self, X))
    got = models.predict_all(fitted, X)
    assert list(got) == list(fitted) and calls == [lgb, xgb]  # one pass each: Voting made none
    for name in fitted:
        assert np.array_equal(got[name], expected[name]), name
    alone = models.predict_all({"Voting": fitted["Voting"]}, X)  # members not predicted before: Voting predicts
    assert np.array_equal(alone["Voting"], expected["Voting"]) and len(calls) == 4


def test_a_folds_fits_run_side_by_side_one_thread_each_and_fit_the_same_models(small_panel, monkeypatch):
    """With two threads, a fold's four fits (the one-year and the shared model, each learner)
    run two at a time on one thread each, the largest first, and give bit for bit the models
    of the same fits one after another; fits on a GPU run one at a time."""
    import threading

    data = LocalStageData(features.stage_rows(small_panel, "IN_FUND_AI", horizons=3), horizons=3)
    device = models.select_device("cpu")
    test = horizons.matrix(horizons.stack(data.origin_rows(2020), [1, 2, 3], truth=False))
    alone = data.fit_learners(2020, ModelFactory(FAST, device, 1))
    fits, both_running = [], threading.Barrier(2, timeout=20)  # times out unless two fits run at once
    original = models.ChangeRegressor.fit

    def watched(self, X, y):
        fits.append((threading.current_thread().name, self.n_jobs, len(X)))
        if len(fits) <= 2:
            both_running.wait()
        return original(self, X, y)

    monkeypatch.setattr(models.ChangeRegressor, "fit", watched)
    trims = []
    monkeypatch.setattr(machine, "release_freed_memory", lambda: trims.append(len(fits)))
    side_by_side = data.fit_learners(2020, ModelFactory(FAST, device, 2))
    assert trims == [4]  # the threads' freed memory given back once, after the fold's fits
    assert len(fits) == 4 and {threads for _, threads, _ in fits} == {1}
    assert all(name.startswith("fit") for name, _, _ in fits) and len({name for name, _, _ in fits}) == 2
    assert fits[0][2] == fits[1][2] > fits[2][2] == fits[3][2]  # the shared model's pairs first
    for name in (*models.LEARNERS, models.ENSEMBLE):
        assert np.array_equal(side_by_side[name].predict(test), alone[name].predict(test)), name
    fits.clear()
    gpu = models.Device("cuda", {name: "cuda" for name in models.LEARNERS}, "test")
    monkeypatch.setattr(models.ChangeRegressor, "fit", lambda self, X, y: fits.append(threading.current_thread().name) or self)
    ModelFactory(FAST, gpu, 2).fit_many([(name, test, test[:, 0]) for name in models.LEARNERS])
    assert fits == [threading.current_thread().name] * 2  # one at a time, in the caller's thread


def test_deriva_damps_the_stages_change_over_the_horizon():
    """Deriva h years ahead: this year times the stage's ratio compounded DAMPING + ... +
    DAMPING ** h times (undamped: h times), so a steep year does not compound five times;
    the factory builds it damped."""
    from censo_forecast import damping, learners
    from censo_forecast.outputs import DRIFT

    X = np.array([[100.0, 1.0], [100.0, 2.0], [100.0, 5.0]])
    drift = models.Drift(0, 1, damping=0.8).fit(X[:1], np.array([90.0]))  # the stage lost 10 % last year
    expected = [100 * 0.9 ** 0.8, 100 * 0.9 ** (0.8 + 0.64), 100 * 0.9 ** sum(0.8 ** k for k in range(1, 6))]
    np.testing.assert_allclose(drift.predict(X), expected)
    np.testing.assert_allclose(models.Drift(0, 1).fit(X[:1], np.array([90.0])).predict(X), [90.0, 81.0, 100 * 0.9 ** 5])
    assert learners.restore_baseline(DRIFT, 0.9).damping == damping.DAMPING < 1


def test_device_selection_without_gpu(monkeypatch):
    monkeypatch.setattr(models, "_cuda_devices", lambda: 0)
    auto = models.select_device("auto")
    assert auto.name == "cpu" and "no NVIDIA GPU" in auto.reason
    assert models.select_device("cpu").of("XGBoost") == models.select_device("cpu").of("LightGBM") == "cpu"
    with pytest.raises(RuntimeError, match="--device cuda: no NVIDIA GPU"):
        models.select_device("cuda")


def test_lightgbm_builds_row_wise_histograms_on_the_cpu_only():
    """Row-wise histograms: LightGBM's own choice's model, fitted faster with passive waiting
    (benchmarks/threads.py); a CPU-only setting that a GPU build must not be given."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5)).astype(np.float32)
    y = X[:, 0] * 3 + rng.normal(size=3000)
    cpu = models.ChangeRegressor("LightGBM", anchor=4, device="cpu")
    assert cpu.booster_params()["force_row_wise"] is True
    assert "force_row_wise" not in models.ChangeRegressor("LightGBM", device="gpu").booster_params()
    fitted = cpu.fit(X, y)
    assert fitted.booster_.params["force_row_wise"] in (True, "1", 1)


def test_device_with_a_gpu_is_chosen_per_learner(monkeypatch):
    """A GPU with a CUDA XGBoost and a CPU-only LightGBM: XGBoost trains on cuda, LightGBM on cpu."""
    from censo_forecast import boosters

    monkeypatch.setattr(models, "_cuda_devices", lambda: 1)
    monkeypatch.setattr(boosters.XGBoostAdapter, "gpu_device", lambda self: "cuda")
    monkeypatch.setattr(boosters.LightGBMAdapter, "gpu_device", lambda self: None)
    device = models.select_device("auto")
    assert device.name == "cuda" and device.of("XGBoost") == "cuda" and device.of("LightGBM") == "cpu"
    assert "LightGBM CPU (installed build has no GPU support)" in device.reason
    est = models.ChangeRegressor("XGBoost", device=device.of("XGBoost"))
    assert est.booster_params()["device"] == "cuda"
    monkeypatch.setattr(boosters.XGBoostAdapter, "gpu_device", lambda self: None)
    assert models.select_device("auto").name == "cpu"
    with pytest.raises(RuntimeError, match="no GPU support in the installed builds of LightGBM, XGBoost"):
        models.select_device("cuda")


def test_forecaster_follows_the_estimator_contract(small_panel):
    fc = EnrollmentForecaster(["IN_MED"], model=FAST, device="cpu", n_jobs=1)
    params = fc.get_params(deep=False)
    assert params == {"stages": ["IN_MED"], "horizons": 5, "model": FAST, "device": "cpu", "min_train_years": 3, "n_jobs": 1,
                      "engine": None, "demography": None}
    assert fc.set_params(n_jobs=2) is fc and fc.n_jobs == 2
    assert clone(fc).get_params()["stages"] == ["IN_MED"]
    with pytest.raises(NotFittedError):
        fc.predict(small_panel)
    assert not hasattr(fc, "cv_")
    with pytest.raises(TypeError):
        EnrollmentForecaster(["IN_MED"], FAST)  # options are keyword-only


def test_forecaster_api_fit_predict(small_panel):
    fc = EnrollmentForecaster(stages=["IN_INF_PRE"], model=FAST, device="cpu", min_train_years=11, n_jobs=1)
    cv = fc.cross_validate(small_panel)
    assert set(cv.summary["modelo"]) == set(models.CENSUS_MODEL_NAMES) and not hasattr(fc, "models_")  # nothing fitted
    assert fc.fit(small_panel) is fc
    assert fc.cv_.summary.equals(cv.summary)  # fit validates the same way and keeps it
    assert sorted(fc.chosen_["IN_INF_PRE"]) == [1, 2, 3, 4, 5] and set(fc.chosen_["IN_INF_PRE"].values()) <= set(models.CENSUS_MODEL_NAMES)
    forecast = fc.predict(small_panel)
    offering = small_panel.filter((pl.col("NU_ANO_CENSO") == 2025) & pl.col("active") & (pl.col("IN_INF_PRE") == 1))
    assert forecast.height == 5 * offering.height  # every school, every horizon
    assert sorted(forecast["NU_ANO_CENSO"].unique()) == [2026, 2027, 2028, 2029, 2030] and (forecast["previsao"] >= 0).all()
    assert (forecast["NU_ANO_CENSO"] - forecast["horizonte"] == 2025).all()
    assert (forecast["limite_inferior_95"] <= forecast["limite_superior_95"]).all()
    assert forecast["NO_ENTIDADE"].null_count() == 0
    # min_train_years=11: origins 2021-2024, so 5 years ahead was never validated: no interval
    assert forecast.filter(pl.col("limite_inferior_80").is_null())["horizonte"].unique().to_list() == [5]
    for h, name in fc.chosen_["IN_INF_PRE"].items():  # each horizon's chosen model, named per row
        assert set(forecast.filter(pl.col("horizonte") == h)["modelo"]) == {name}
    # the intervals widen with the horizon, as its walk-forward residuals do
    width = (forecast.filter(pl.col("horizonte") <= 4).group_by("horizonte")
             .agg((pl.col("limite_superior_80") - pl.col("limite_inferior_80")).mean()).sort("horizonte"))
    assert width["limite_superior_80"][-1] > width["limite_superior_80"][0]


def test_totals_without_residuals_say_what_to_do(small_panel):
    fc = EnrollmentForecaster(stages=["IN_ESP_CE"], model=FAST, device="cpu", n_jobs=1, min_train_years=12).fit(small_panel)
    schools = fc.predict(small_panel)
    fc.calibration_ = {}  # models saved by a version that kept no residuals
    with pytest.raises(ValueError, match="IN_ESP_CE: totals need the walk-forward residuals, which these models lack; refit them"):
        fc.aggregate(small_panel, schools)


def test_training_pairs_end_at_the_origin_and_keep_the_window(small_panel):
    """A fit for an origin sees pairs with target years <= origin, the last `window` of them;
    truth outside the window cannot move the models; inside it, it does."""
    from dataclasses import replace

    flag = "IN_FUND_AI"
    frame = features.stage_rows(small_panel, flag, horizons=3)
    data = LocalStageData(frame, horizons=3)
    every = replace(FAST, max_training_rows=0)
    pairs = lambda origin, window: data.training_pairs(origin, window, 0)  # noqa: E731
    three = pairs(2019, 3)
    assert sorted(three["target_year"].unique()) == [2017, 2018, 2019]
    assert sorted(three["horizon"].unique()) == [1.0, 2.0, 3.0]
    assert (three["target_year"] == three["origin_year"] + three["horizon"].cast(pl.Int64)).all()
    assert sorted(pairs(2019, 0)["target_year"].unique()) == list(range(2012, 2020))  # 0: expanding
    # truth outside the window cannot move the models; inside it, it does
    device, test = models.select_device("cpu"), horizons.stack(data.origin_rows(2019), [1, 2, 3])
    shifted = LocalStageData(frame.with_columns(
        pl.when(pl.col("origin_year") + h < 2017).then(pl.col(f"y_true_{h}") + 50).otherwise(pl.col(f"y_true_{h}")).alias(f"y_true_{h}")
        for h in (1, 2, 3)), horizons=3)
    for window, same in ((3, True), (0, False)):
        factory = ModelFactory(replace(every, train_window_years=window), device, 1)
        a = data.fit_learners(2019, factory)["Voting"].predict(horizons.matrix(test))
        b = shifted.fit_learners(2019, factory)["Voting"].predict(horizons.matrix(test))
        assert np.array_equal(a, b) == same, window


def test_first_years_ahead_get_models_of_their_own(small_panel):
    """separate_horizons = 1: one year ahead each learner is a model trained on the one-year
    pairs only, further ahead the shared model of every horizon; 0: the shared model everywhere."""
    from dataclasses import replace

    data = LocalStageData(features.stage_rows(small_panel, "IN_FUND_AI", horizons=3), horizons=3)
    device = models.select_device("cpu")
    test = horizons.stack(data.origin_rows(2020), [1, 2, 3], truth=False)
    X, ahead = horizons.matrix(test), test["horizon"].to_numpy()
    split = data.fit_learners(2020, ModelFactory(FAST, device, 1))
    shared = data.fit_learners(2020, ModelFactory(replace(FAST, separate_horizons=0), device, 1))
    assert isinstance(shared["LightGBM"], models.ChangeRegressor)
    lgbm = split["LightGBM"]
    assert isinstance(lgbm, models.HorizonSplit) and sorted(lgbm.own) == [1]
    factory = ModelFactory(FAST, device, 1)
    one_year = data.training_pairs(2020, FAST.train_window_years, factory.row_cap([1], 3), [1])
    own = models.ChangeRegressor("LightGBM", features.ANCHOR_INDEX, FAST, "cpu", 1).fit(horizons.matrix(one_year),
                                                                                          one_year["y_true"].to_numpy())
    near = ahead == 1
    assert np.array_equal(lgbm.predict(X)[near], own.predict(X[near]))
    assert np.array_equal(lgbm.predict(X)[~near], shared["LightGBM"].predict(X[~near]))
    assert not np.array_equal(lgbm.predict(X)[near], shared["LightGBM"].predict(X[near]))
    voting = split["Voting"].predict(X)
    assert np.allclose(voting, (lgbm.predict(X) + split["XGBoost"].predict(X)) / 2)
    values, base = split["Voting"].contributions(X)  # SHAP of each row from the model serving it
    assert np.allclose(base + values.sum(axis=1), split["Voting"].predict_change(X), atol=1e-3)
    everything = data.fit_learners(2020, ModelFactory(replace(FAST, separate_horizons=5), device, 1))["XGBoost"]
    assert sorted(everything.own) == [1, 2, 3] and everything.shared is None  # no shared fit when it serves no horizon
    with pytest.raises(ValueError, match="separate_horizons"):
        ModelSettings(separate_horizons=-1)
    # an own model's fit sees its horizon's share of the row cap: the pairs the shared model sees of it
    capped = ModelFactory(replace(FAST, max_training_rows=1000), device, 1)
    assert (capped.row_cap([1], 5), capped.row_cap([1, 2, 3, 4, 5], 5), factory.row_cap([1], 3)) == (200, 1000, 200_000 // 3)
    assert ModelFactory(replace(FAST, max_training_rows=0), device, 1).row_cap([1], 5) == 0  # 0: every pair


def test_training_rows_are_sampled_by_a_hash_that_any_partitioning_repeats(small_panel):
    """The cap keeps about max_training_rows pairs, spread over horizons and years, and the
    same pairs whether the rows are held in one frame or split into parts (an engine's)."""

    frame = features.stage_rows(small_panel, "IN_FUND_AI", horizons=5)
    data = LocalStageData(frame, horizons=5)
    every = data.training_pairs(2024, FAST.train_window_years, 0)
    capped = data.training_pairs(2024, FAST.train_window_years, every.height // 4)
    assert abs(capped.height - every.height / 4) < 0.1 * every.height / 4
    share = capped.group_by("horizon").len().join(every.group_by("horizon").len(), on="horizon").select(pl.col("len") / pl.col("len_right"))
    assert share.to_series().is_between(0.15, 0.35).all()  # every horizon keeps about a quarter
    fraction = horizons.sampling_fraction(every.height, every.height // 4)
    parts = [horizons.training_pairs(part, 2024, FAST.train_window_years, [1, 2, 3, 4, 5], fraction)
             for part in (frame.filter(pl.col("CO_UF") < 30), frame.filter(pl.col("CO_UF") >= 30))]
    keys = ["CO_ENTIDADE", "origin_year", "horizon"]
    assert pl.concat(parts).sort(keys).equals(capped.sort(keys))


def test_negative_training_window_is_refused():
    with pytest.raises(ValueError, match="train_window_years"):
        ModelSettings(train_window_years=-1)


def test_error_by_size_and_totals_by_year_from_hand_computed_rows():
    """The two tables the report reads: MAE per size bin of last year's enrollment, totals per year."""
    preds = pl.DataFrame({
        "etapa": ["IN_MED"] * 4, "horizonte": [1] * 4, "NU_ANO_CENSO": [2023, 2023, 2024, 2024], "y_true": [5.0, 300.0, 7.0, 280.0],
        "Persistencia": [4.0, 310.0, 5.0, 300.0], "Voting": [5.5, 305.0, 6.0, 290.0],
    })
    errors = results.error_by_size(preds)
    small = errors.filter((pl.col("modelo") == "Voting") & (pl.col("faixa_tamanho") == "<10")).row(0, named=True)
    assert small["n"] == 2 and small["MAE"] == pytest.approx((0.5 + 1.0) / 2)
    big = errors.filter((pl.col("modelo") == "Persistencia") & (pl.col("faixa_tamanho") == "200-399")).row(0, named=True)
    assert big["n"] == 2 and big["MAE"] == pytest.approx((10 + 20) / 2)
    assert errors["modelo"].unique(maintain_order=True).to_list() == ["Persistencia", "Voting"]
    totals = results.totals_by_year(preds)
    row = totals.filter((pl.col("modelo") == "Voting") & (pl.col("NU_ANO_CENSO") == 2024)).row(0, named=True)
    assert row["real"] == 287.0 and row["previsao"] == 296.0


def test_cohort_progression_by_hand():
    """Coorte for final elementary at origin 2025 (census grades 2023-2025): two schools A and C
    offer it, school B (early elementary only) feeds the municipality with its grade 5."""
    af = {"A": {2023: (30, 28, 26, 25), 2024: (32, 29, 27, 24), 2025: (31, 30, 28, 26)},
          "C": {2023: (10, 10, 10, 10), 2024: (8, 9, 9, 9), 2025: (9, 8, 9, 9)}}
    grade5 = {2023: 40, 2024: 35, 2025: 38}
    codes = {"A": 33000001, "B": 33000002, "C": 33000003}
    rows = []
    for year in (2023, 2024, 2025):
        for name in ("A", "C"):
            g = af[name][year]
            rows.append({"CO_ENTIDADE": codes[name], "NU_ANO_CENSO": year, "IN_FUND_AF": 1, "QT_MAT_FUND_AF": sum(g),
                         **{f"QT_MAT_FUND_AF_{6 + i}": v for i, v in enumerate(g)}, **{f"QT_MAT_FUND_AI_{i}": 0 for i in range(1, 6)}})
        rows.append({"CO_ENTIDADE": codes["B"], "NU_ANO_CENSO": year, "IN_FUND_AI": 1, "QT_MAT_FUND_AI": 80 + grade5[year],
                     **{f"QT_MAT_FUND_AI_{i}": 20 for i in range(1, 5)}, "QT_MAT_FUND_AI_5": grade5[year],
                     **{f"QT_MAT_FUND_AF_{i}": 0 for i in range(6, 10)}})
    frame = features.forecast_rows(build_panel(census_rows(rows)), "IN_FUND_AF", horizons=5)
    got = dict(zip(frame["CO_ENTIDADE"].to_list(), frame["cohort_forecast"].to_list(), strict=True))
    # progression: pupils past grade 6 in t over pupils below grade 9 in t - 1, pooled 2024-2025
    a_in, a_base = (112 - 32) + (115 - 31), (109 - 25) + (112 - 24)
    c_in, c_base = (35 - 8) + (35 - 9), (40 - 10) + (35 - 9)
    area = (a_in + c_in) / (a_base + c_base)  # the municipality's = the state's (one municipality)
    ratio = {n: (i + 30 * area) / (b + 30) for n, i, b in (("A", a_in, a_base), ("C", c_in, c_base))}
    # intake: grade 6 of 2025 and 2024 over grade 5 of the year before (2023 has no 2022 to pair)
    share = {"A": (31 + 32) / (35 + 40), "C": (9 + 8) / (35 + 40)}
    continuing = {"A": 115 - 26, "C": 35 - 9}
    for name in ("A", "C"):
        expected = ratio[name] * continuing[name] + share[name] * grade5[2025]
        assert got[codes[name]] == pytest.approx(expected, rel=1e-5), name
    row = frame.filter(pl.col("CO_ENTIDADE") == codes["A"]).row(0, named=True)
    assert row["cohort_ratio"] == pytest.approx(ratio["A"], rel=1e-6) and row["intake_share"] == pytest.approx(share["A"])
    assert row["entry_grade_lag1"] == 31 and row["last_grade_lag1"] == 26 and row["muni_feeder_leaving_lag1"] == 38
    assert row["grade_progression_lag1"] == pytest.approx((115 - 31) / (112 - 24))
    # h years ahead: the method applied h times, grade by grade (each year's intake the same)
    for name in ("A", "C"):
        grades, intake = list(af[name][2025]), share[name] * grade5[2025]
        row = frame.filter(pl.col("CO_ENTIDADE") == codes[name]).row(0, named=True)
        for h in range(1, 6):
            grades = [intake] + [ratio[name] * g for g in grades[:-1]]
            column = "cohort_forecast" if h == 1 else f"cohort_forecast_{h}"
            assert row[column] == pytest.approx(sum(grades), rel=1e-5), (name, h)


def test_cohort_features_before_the_census_had_grades(small_panel):
    rows = features.stage_rows(small_panel, "IN_FUND_AI")
    early, late = rows.filter(pl.col("origin_year") < 2023), rows.filter(pl.col("origin_year") >= 2024)
    for name in ("entry_grade_lag1", "last_grade_lag1", "grade_progression_lag1"):
        assert early[name].null_count() == early.height, name  # the census's own grades only
        assert late[name].null_count() < late.height / 2, name
    assert rows["cohort_forecast"].null_count() == 0 and (rows["cohort_forecast"] >= 0).all()
    assert rows.filter(pl.col("origin_year") == 2012)["intake_share"].null_count() < rows.filter(pl.col("origin_year") == 2012).height


def test_threads_follow_the_cpus_available_and_the_size_of_the_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert machine.available_cpus(tmp_path) == 8  # no quota file
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container allowed 1.5 CPUs
    assert machine.available_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.available_cpus(tmp_path) == 8
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert machine.available_cpus(tmp_path) == 1
    monkeypatch.setattr(machine, "available_cpus", lambda: 4)
    assert machine.threads_for(machine.SMALL_TRAINING_ROWS - 1, 8) == 1  # a small fit: one thread
    assert machine.threads_for(10**6, 8) == 4 and machine.threads_for(10**6, 2) == 2
    seen = {}
    monkeypatch.setattr(models.boosters.LightGBMAdapter, "fit", lambda self, X, y, params: seen.update(params) or "booster")
    models.ChangeRegressor("LightGBM", n_jobs=8).fit(np.zeros((500, 3), dtype=np.float32), np.zeros(500))
    assert seen["n_jobs"] == 1


def test_memory_a_worker_thread_freed_goes_back_to_the_system():
    """glibc keeps what a thread frees in that thread's arena; `release_freed_memory` returns
    it (what a fold's fits side by side would otherwise pile up, run after run)."""
    import threading

    psutil = pytest.importorskip("psutil")
    if machine._malloc_trim() is None:
        pytest.skip("not glibc: nothing to trim")
    kept = []

    def churn():  # 3,000 blocks of 64 KB, under the size glibc maps on its own
        blocks = [np.ones(8_000) for _ in range(3_000)]
        kept.append(blocks[-1])
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = psutil.Process().memory_info().rss
    machine.release_freed_memory()
    assert before - psutil.Process().memory_info().rss > 100 * 2**20


def test_openmp_waits_passively_unless_the_user_chose():
    """Set when a boosting library is loaded, not when censo_forecast is imported."""
    import os
    import subprocess
    import sys

    untouched = "import censo_forecast.pipeline, os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    code = "import censo_forecast.boosters as b, os; b.library('lightgbm'); print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", untouched], env=env, capture_output=True, text=True).stdout.strip() == "unset"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "PASSIVE"
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True)
    assert mine.stdout.strip() == "ACTIVE"


def test_the_choice_is_scored_as_it_is_published():
    """At each origin the model with the lowest mean over the folds known then is taken, and
    scored at that origin: LightGBM wins the first fold, Coorte every later one, so the
    published choice is LightGBM at 2021 (a bad year for it) and Coorte at 2022."""
    maes = {"Persistencia": (10.0, 10.0, 10.0), "LightGBM": (5.0, 30.0, 20.0), "Coorte": (8.0, 9.0, 4.0)}
    folds = pl.DataFrame([{"etapa": "IN_MED", "modelo": m, "horizonte": 1, "NU_ANO_CENSO": year, "MAE": mae}
                          for m, values in maes.items() for year, mae in zip((2021, 2022, 2023), values, strict=True)])
    skill = results.choice_skill(folds).row(0, named=True)
    # origin 2020: nothing known; 2021 (test year 2022): LightGBM, 30 against 10; 2022: Coorte
    # (means 8.5 against 17.5), 4 against 10
    assert skill["Skill_Escolha_vs_Persistencia"] == pytest.approx(1 - (30 + 4) / (10 + 10))
    summary = results.summarize(folds.with_columns(pl.lit(1).alias("n"), pl.lit(0.0).alias("RMSE"), pl.lit(0.0).alias("R2"),
                                                   pl.lit(0.0).alias("WAPE")))
    chosen = summary.filter(pl.col("Escolhido")).row(0, named=True)
    assert chosen["modelo"] == "Coorte" and chosen["Skill_MAE_vs_Persistencia"] == pytest.approx(1 - 7 / 10)  # hindsight: 30 %
