"""Next-year forecasts: conformal intervals, aggregates, saved models and `predict`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from censo_forecast import forecast, intervals, modelstore
from censo_forecast.cli import app
from censo_forecast.panel import build_panel
from test_forecasting import census_rows

SCHOOL_FORECAST_COLUMNS = ["CO_ENTIDADE", "NO_ENTIDADE", "CO_MUNICIPIO", "CO_UF", "etapa", "modelo", "matriculas_ultimo_ano",
                  "previsao", "limite_inferior_80", "limite_superior_80", "limite_inferior_95", "limite_superior_95", "horizonte"]


def test_conformal_offsets_are_order_statistics():
    r = np.arange(1.0, 100.0)  # n = 99
    assert intervals._level_offsets(r)[0.80] == (10.0, 90.0)  # k = floor(100*0.1), ceil(100*0.9)
    assert intervals._level_offsets(r)[0.95] == (2.0, 98.0)  # k = floor(100*0.025), ceil(100*0.975)


def _synthetic_predictions(rng, years=(2020, 2021, 2022), n=6000) -> pl.DataFrame:
    """Forecasts whose errors scale with school size: what Mondrian bins are for."""
    frames = []
    for year in years:
        last = rng.integers(0, 600, n).astype(float)
        pred = last * 0.98
        y = np.maximum(pred + rng.normal(0, 1 + 0.08 * last), 0)
        frames.append(pl.DataFrame({"NU_ANO_CENSO": year, "Persistencia": last, "Voting": pred, "y_true": y,
                                    "CO_MUNICIPIO": 2700000 + np.arange(n) % 50, "CO_UF": 27}))
    return pl.concat(frames)


def test_coverage_is_near_nominal_and_calibrated_on_earlier_years_only():
    preds = _synthetic_predictions(np.random.default_rng(0))
    coverage = intervals.coverage_by_year(preds, "Voting")
    assert coverage["NU_ANO_CENSO"].to_list() == [2021, 2022]  # the first test year has nothing earlier
    assert coverage["Cobertura_80"].to_numpy() == pytest.approx([0.80, 0.80], abs=0.03)
    assert coverage["Cobertura_95"].to_numpy() == pytest.approx([0.95, 0.95], abs=0.03)


def test_mondrian_bins_give_small_schools_narrow_intervals():
    preds = _synthetic_predictions(np.random.default_rng(1))
    calibration = intervals.calibration_table(preds, "Voting")
    b = intervals.bounds(np.array([5.0, 500.0]), np.array([5.0, 500.0]), calibration)
    width = b["limite_superior_95"] - b["limite_inferior_95"]
    assert width[0] < width[1] / 5
    assert (b["limite_inferior_95"] >= 0).all()


def test_area_intervals_come_from_the_errors_of_totals_at_their_own_level():
    """Schools of one municipality err together (each municipality's own shock, +-10 %, a
    different sign each year): its totals' range is that shock's, which independent school
    draws would average away; the state's range, where those shocks cancel, stays narrow."""
    rng = np.random.default_rng(3)
    munis, per_muni, years = 60, 20, (2018, 2019, 2020, 2021)
    frames = []
    for year in years:
        muni = np.repeat(np.arange(munis), per_muni)
        shock = rng.choice([-0.1, 0.1], size=munis)[muni]
        pred = np.full(len(muni), 100.0)
        frames.append(pl.DataFrame({"NU_ANO_CENSO": year, "Persistencia": pred, "Voting": pred, "CO_MUNICIPIO": 2700000 + muni,
                                    "CO_UF": 27, "y_true": pred * (1 + shock) + rng.normal(0, 3, len(muni))}))
    rows = pl.concat(frames)
    walk_forward = rows.group_by("CO_MUNICIPIO", "CO_UF", "NU_ANO_CENSO").agg(pl.col("Voting").sum().alias("previsao"),
                                                                             pl.col("y_true").sum())
    schools = pl.DataFrame({"CO_MUNICIPIO": 2700000 + np.repeat(np.arange(munis), per_muni), "CO_UF": 27,
                            "previsao": 100.0, "matriculas_ultimo_ano": 100.0})
    offerings = pl.DataFrame({"CO_MUNICIPIO": [2700000], "CO_UF": [27], "NU_ANO_CENSO": [2021], "new_enrollment": [0.0]})
    areas = forecast.area_totals(schools, walk_forward, offerings, "IN_MED")
    width = lambda f: ((f["limite_superior_80"] - f["limite_inferior_80"]) / f["previsao"]).to_numpy()  # noqa: E731
    assert np.all(width(areas["municipios"]) > 0.15)  # about +-10 %
    assert width(areas["ufs"])[0] < 0.06  # sixty shocks of either sign nearly cancel
    for frame in areas.values():  # the forecast itself always inside
        inside = (pl.col("limite_inferior_95") <= pl.col("previsao")) & (pl.col("previsao") <= pl.col("limite_superior_95"))
        assert frame.select(inside).to_series().all()


def _predictions_with_noisy_early_years(rng, years=range(2012, 2021), calm_from=2017, n=3000) -> pl.DataFrame:
    """Walk-forward rows whose errors were ten times wider before `calm_from` (a stage expanding
    by policy, then settled)."""
    frames = []
    for year in years:
        last = rng.integers(20, 200, n).astype(float)
        scale = 2.0 if year >= calm_from else 20.0
        frames.append(pl.DataFrame({"NU_ANO_CENSO": year, "Persistencia": last, "Voting": last,
                                    "y_true": last + rng.normal(0, scale, n), "CO_MUNICIPIO": 2700000, "CO_UF": 27}))
    return pl.concat(frames)


def test_school_intervals_come_from_the_recent_test_years():
    """Errors that have settled give narrow ranges, however wide the first test years' were; the
    walk-forward's coverage is measured the same way (calibrated on the recent years known)."""
    preds = _predictions_with_noisy_early_years(np.random.default_rng(5))
    calibration = intervals.calibration_table(preds, "Voting")
    b = intervals.bounds(np.array([100.0]), np.array([100.0]), calibration)
    assert b["limite_superior_80"][0] - b["limite_inferior_80"][0] == pytest.approx(2 * 1.2816 * 2.0, rel=0.15)
    coverage = intervals.coverage_by_year(preds, "Voting").filter(pl.col("NU_ANO_CENSO") == 2020)
    assert coverage["Cobertura_80"].item() == pytest.approx(0.80, abs=0.03)  # all nine years: about 0.99


def test_municipal_ranges_shrink_a_bias_seen_in_one_test_year_and_states_take_it_either_side():
    """One test year in which every municipality's total was 20 % below its forecast: a year's
    bias as much as the method's. A municipality's range then still holds its forecast inside
    (the bias counts a third), where the signed errors alone would put the whole range below
    it. The state, with one error a year to go on, learns from it how far it may miss, not on
    which side: its range spans 20 % either way."""
    rng = np.random.default_rng(4)
    munis = 80
    walk_forward = pl.DataFrame({"CO_MUNICIPIO": 2700000 + np.arange(munis), "CO_UF": 27, "NU_ANO_CENSO": 2020,
                                 "previsao": 1000.0, "y_true": 800.0 * (1 + rng.normal(0, 0.1, munis))})
    schools = pl.DataFrame({"CO_MUNICIPIO": 2700000 + np.arange(munis), "CO_UF": 27, "previsao": 1000.0,
                            "matriculas_ultimo_ano": 1000.0})
    offerings = pl.DataFrame({"CO_MUNICIPIO": [2700000], "CO_UF": [27], "NU_ANO_CENSO": [2021], "new_enrollment": [0.0]})
    areas = forecast.area_totals(schools, walk_forward, offerings, "IN_MED", years_ahead=1)
    municipal = areas["municipios"]
    assert (municipal["limite_superior_80"] > 1000.0).all()  # signed errors alone: 1000 at most
    assert municipal["limite_inferior_80"].median() == pytest.approx(1000 * (1 - 0.2 / 3 - 1.2816 * 0.8 * 0.1), rel=0.03)
    state = areas["ufs"].row(0, named=True)
    error = 1 - walk_forward["y_true"].sum() / walk_forward["previsao"].sum()  # about 20 %
    assert state["limite_inferior_80"] == pytest.approx(state["previsao"] * (1 - error))
    assert state["limite_superior_80"] == pytest.approx(state["previsao"] * (1 + error))  # signed: the forecast itself


def test_new_offerings_come_from_recent_openings():
    rows = [{"NU_ANO_CENSO": y, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 100} for y in (2019, 2020, 2021)]
    rows += [{"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 2, "IN_MED": 1, "QT_MAT_MED": 40}]  # opens the stage in 2021
    rows += [{"NU_ANO_CENSO": 2020, "CO_ENTIDADE": 3, "IN_MED": 0}, {"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 3, "IN_MED": 1, "QT_MAT_MED": 12}]
    table = forecast.new_offerings(build_panel(census_rows(rows)), "IN_MED")
    assert dict(table.select("NU_ANO_CENSO", "new_enrollment").iter_rows()) == {2020: 0.0, 2021: 52.0}


@pytest.mark.slow
def test_forecast_files_columns_and_bounds(run_out):
    schools = pl.read_parquet(run_out / "previsoes_2026.parquet")
    assert schools.columns == SCHOOL_FORECAST_COLUMNS
    assert pl.read_csv(run_out / "previsoes_2026.csv").columns == SCHOOL_FORECAST_COLUMNS
    assert set(schools["etapa"]) == {"IN_INF_CRE", "IN_MED"}
    ordered = (
        (pl.col("limite_inferior_95") <= pl.col("limite_inferior_80"))
        & (pl.col("limite_inferior_80") <= pl.col("limite_superior_80"))
        & (pl.col("limite_superior_80") <= pl.col("limite_superior_95"))
        & (pl.col("limite_inferior_95") >= 0)
    )
    assert schools.select(ordered.all()).item()
    assert (
        schools.select(
            ((pl.col("previsao") >= pl.col("limite_inferior_95")) & (pl.col("previsao") <= pl.col("limite_superior_95"))).mean()
        ).item()
        > 0.95
    )
    assert schools["NO_ENTIDADE"].null_count() == 0
    results = pl.read_csv(run_out / "resultados_finais.csv")
    for col in ("Cobertura_80_CV", "Cobertura_95_CV"):
        assert results[col].is_between(0, 1).all(), col
    for col in ("APE_Municipios_Media_CV", "APE_UFs_Media_CV"):  # percentage errors: any size, never negative or missing
        assert results[col].null_count() == 0 and (results[col] >= 0).all(), col
    assert (results["Cobertura_95_CV"] >= results["Cobertura_80_CV"]).all()


@pytest.mark.slow
def test_aggregates_equal_the_sums_of_their_parts(run_out):
    schools = pl.read_parquet(run_out / "previsoes_2026.parquet")
    munis = pl.read_csv(run_out / "previsoes_2026_municipios.csv")
    ufs = pl.read_csv(run_out / "previsoes_2026_ufs.csv")
    country = pl.read_csv(run_out / "previsoes_2026_brasil.csv")
    by_muni = schools.group_by("etapa", "CO_MUNICIPIO").agg(pl.col("previsao").sum().alias("s"))
    joined = munis.join(by_muni, on=["etapa", "CO_MUNICIPIO"], how="left").with_columns(pl.col("s").fill_null(0))
    assert np.allclose(joined["previsao_escolas"], joined["s"])
    for frame in (munis, ufs, country):
        assert np.allclose(frame["previsao"], frame["previsao_escolas"] + frame["previsao_novas_ofertas"])
        assert "ajuste_agregacao" not in frame.columns  # the errors' mean is not added (it made totals worse)
        # the forecast lies inside its own bounds
        assert frame.select(
            ((pl.col("limite_inferior_95") <= pl.col("previsao")) & (pl.col("previsao") <= pl.col("limite_superior_95"))).all()
        ).item()
    uf_from_muni = munis.group_by("etapa", "CO_UF").agg(pl.col("previsao").sum().alias("m"))
    assert np.allclose(ufs.join(uf_from_muni, on=["etapa", "CO_UF"])["m"], ufs.join(uf_from_muni, on=["etapa", "CO_UF"])["previsao"])
    for flag in ("IN_INF_CRE", "IN_MED"):
        for col in ("previsao_escolas", "previsao_novas_ofertas", "previsao"):
            assert country.filter(pl.col("etapa") == flag)[col].item() == pytest.approx(ufs.filter(pl.col("etapa") == flag)[col].sum())
    for frame in (munis, ufs, country):
        assert frame.select(
            (pl.col("limite_inferior_95") <= pl.col("limite_inferior_80")).all()
            & (pl.col("limite_superior_80") <= pl.col("limite_superior_95")).all()
        ).item()


@pytest.mark.slow
def test_later_years_add_the_offerings_opened_on_the_way_and_widen(run_out):
    """h years ahead the totals count h years of new offerings; the schools' ranges widen."""
    country = {y: pl.read_csv(run_out / f"previsoes_{y}_brasil.csv").sort("etapa") for y in range(2026, 2031)}
    for flag in ("IN_INF_CRE", "IN_MED"):
        new = [country[y].filter(pl.col("etapa") == flag)["previsao_novas_ofertas"].item() for y in range(2026, 2031)]
        assert new == pytest.approx([h * new[0] for h in range(1, 6)])
    width = [
        pl.read_parquet(run_out / f"previsoes_{y}.parquet")
        .select(pl.col("limite_superior_80") - pl.col("limite_inferior_80"))
        .mean()
        .item()
        for y in range(2026, 2030)
    ]  # 2030 (five years ahead) has one test year to calibrate on
    assert width[-1] > width[0], width


@pytest.mark.slow
def test_predict_reproduces_run_forecasts(run_out, small_census, tmp_path):
    raw, _ = small_census
    result = CliRunner().invoke(app, ["predict", "--models", str(run_out / "models"), "--raw-dir", str(raw),
                                      "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "pred"), "--offline"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "pred").glob("previsoes_*"))
    assert written == sorted(p.name for p in run_out.glob("previsoes_*"))  # the same set: T+1 ... T+5
    assert len(written) == 5 * 5
    for year in range(2026, 2031):
        ran = pl.read_parquet(run_out / f"previsoes_{year}.parquet")
        predicted = pl.read_parquet(tmp_path / "pred" / f"previsoes_{year}.parquet")
        assert predicted.columns == ran.columns and predicted.height == ran.height
        for col in ("previsao", "limite_inferior_80", "limite_superior_95"):
            np.testing.assert_allclose(predicted[col].to_numpy(), ran[col].to_numpy(), rtol=1e-6, atol=1e-6)
        ran_uf = pl.read_csv(run_out / f"previsoes_{year}_ufs.csv")
        assert pl.read_csv(tmp_path / "pred" / f"previsoes_{year}_ufs.csv").equals(ran_uf)


@pytest.mark.slow
def test_a_loaded_forecaster_saves_and_reloads_to_the_same_forecast(run_out, small_census, tmp_path):
    from censo_forecast import load_census
    from censo_forecast.forecaster import EnrollmentForecaster
    from censo_forecast.inep import ingest

    raw, _ = small_census
    ingest.ingest(raw, tmp_path / "cache", list(range(2011, 2026)), jobs=1).raise_for_failures()
    census = load_census(tmp_path / "cache")
    loaded = EnrollmentForecaster.load(run_out / "models")
    assert loaded.save(tmp_path / "resaved") == tmp_path / "resaved"
    again = EnrollmentForecaster.load(tmp_path / "resaved")
    assert again.chosen_ == loaded.chosen_ and again.training_years_ == loaded.training_years_
    first, second = loaded.predict(census), again.predict(census)
    assert first.height > 0 and first.equals(second)
    original = pl.concat([pl.read_parquet(run_out / f"previsoes_{y}.parquet") for y in range(2026, 2031)])
    keys = ["etapa", "horizonte", "CO_ENTIDADE"]
    np.testing.assert_allclose(first.sort(keys)["previsao"].to_numpy(), original.sort(keys)["previsao"].to_numpy())


@pytest.mark.slow
def test_predict_refuses_mismatched_models(run_out, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(run_out / "models", models)
    meta = json.loads((models / "metadata.json").read_text())

    def seal(meta):  # as another installation would have written it
        meta[modelstore.SELF_HASH] = modelstore._content_hash(meta)
        (models / "metadata.json").write_text(json.dumps(meta))

    meta["versions"]["lightgbm"] = "1.0.0"
    seal(meta)
    with pytest.raises(modelstore.ModelStoreError, match=r"models saved with lightgbm 1\.0\.0.*install lightgbm==1\.0\.0 or refit"):
        modelstore.load(models)
    meta["versions"]["lightgbm"] = json.loads((run_out / "models" / "metadata.json").read_text())["versions"]["lightgbm"]
    meta["features"] = meta["features"][:-1] + ["QT_SOMETHING_NEW"]
    seal(meta)
    with pytest.raises(modelstore.ModelStoreError, match="trained on other feature columns"):
        modelstore.load(models)
    result = CliRunner().invoke(app, ["predict", "--models", str(tmp_path / "nowhere"), "--raw-dir", str(tmp_path), "--offline"])
    assert result.exit_code == 1 and "not a saved-models folder" in result.output
