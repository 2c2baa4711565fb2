"""Births and population: the documented format, what an origin knows of them, the Demografia
baseline, the synthetic census's demography, and the leakage rule on the demographic tables."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from censo_forecast import features, horizons, models, municipal
from censo_forecast.config import ModelSettings
from censo_forecast.demography import known, tables
from censo_forecast.demography import synthetic as synthetic_demography
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import catalog, ingest
from censo_forecast.panel import build_panel

FAST = ModelSettings(n_estimators=15, num_leaves=7, max_depth=3)
AI = catalog.stage("IN_FUND_AI")


def _births_csv(path, rows):
    path.write_text("cod_mun7,cod_mun6,uf,municipio,year,live_births\n"
                    + "".join(f"{c},{str(c)[:6] if c else ''},AL,X,{y},{b}\n" for c, y, b in rows), encoding="utf-8")


def test_births_drop_the_ignored_municipality_mark_preliminary_years_and_backcast_created_ones(tmp_path, caplog):
    # 2700101 exists from 1996; 2700200 is created in 1999 (its births before were its parent's)
    rows = [(2700101, y, 100 + y - 1996) for y in range(1996, 2004)]
    rows += [(2700200, y, 50) for y in range(1999, 2004)]
    rows += [("", y, 7) for y in range(1996, 2004)]  # MUNICIPIO IGNORADO: no 7-digit code
    _births_csv(tmp_path / "nascidos.csv", rows)
    with caplog.at_level(logging.INFO):
        demo = tables.read_folder(tmp_path)
    births = demo.births.sort(tables.MUNICIPALITY, tables.YEAR)
    assert set(births[tables.MUNICIPALITY]) == {270010, 270020}  # the ignored rows are dropped, and said
    assert "without a municipality" in caplog.text and "1 municipalities created after 1996" in caplog.text
    assert births.filter(pl.col(tables.PRELIMINARY))[tables.YEAR].unique().sort().to_list() == [2001, 2002, 2003]
    created = births.filter(pl.col(tables.MUNICIPALITY) == 270020)
    assert created[tables.YEAR].to_list() == list(range(1996, 2004))
    early = created.filter(pl.col(tables.YEAR) < 1999)
    assert early[tables.BACKCAST].all() and not created.filter(pl.col(tables.YEAR) >= 1999)[tables.BACKCAST].any()
    # its share of the state's births in its first three years, times the state's births then
    state = {y: 100 + y - 1996 + (50 if y >= 1999 else 0) for y in range(1996, 2004)}
    share = 150 / sum(state[y] for y in (1999, 2000, 2001))
    np.testing.assert_allclose(early[tables.BIRTHS].to_numpy(), [share * state[y] for y in (1996, 1997, 1998)])


def test_population_from_single_ages_wins_over_groups_and_a_missing_age_is_no_partial_sum(tmp_path):
    _births_csv(tmp_path / "b.csv", [(2700101, 2010, 100)])
    single = [f"2700101,2010,{a},{10 * (a + 1)}" for a in range(18)] + [f"2700200,2010,{a},5" for a in range(18) if a != 7]
    (tmp_path / "idade.csv").write_text("cod_mun7,year,age,pop\n" + "\n".join(single) + "\n")
    (tmp_path / "faixas.csv").write_text("cod_mun7,year,pop_0_3,pop_4_5,pop_6,pop_6_14,pop_15_17,pop_total\n"
                                         "2700101,2010,1,1,1,1,1,9\n2700300,2010,40,20,10,90,30,500\n")
    pop = tables.read_folder(tmp_path).population.sort(tables.MUNICIPALITY)
    first = pop.row(0, named=True)
    assert first[tables.population_column("IN_FUND_AI")] == sum(10 * (a + 1) for a in range(6, 11))  # single ages won
    assert first[tables.population_column("IN_INF_CRE")] == 10 + 20 + 30 + 40
    second = pop.row(1, named=True)  # age 7 missing: the bands holding it are unknown, the others whole
    assert second[tables.population_column("IN_FUND_AI")] is None and second[tables.population_column("IN_MED")] == 15
    third = pop.row(2, named=True)  # groups: 7-14 split evenly between early and final elementary
    assert third[tables.population_column("IN_FUND_AI")] == 10 + 40 and third[tables.population_column("IN_FUND_AF")] == 40


@pytest.mark.parametrize(("name", "content", "message"), [
    ("b.csv", "cod_mun7,year,live_births\n2700101,2010,abc\n", "column 'live_births' row 2 holds 'abc'"),
    ("b.csv", "cod_mun7,year,live_births\n2700101,2010,-3\n", "negative births for municipality 270010 in 2010"),
    ("x.csv", "a,b\n1,2\n", "not a births or population file"),
    ("p.csv", "cod_mun7,year,age,pop\n2700101,2010,1,5\n", "no births file"),
])
def test_a_bad_demographic_file_is_a_message_naming_it(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(tables.DemographyError, match=message) as error:
        tables.read_folder(tmp_path)
    assert name in str(error.value)


def test_an_origin_knows_the_births_before_it_and_the_latest_for_later_years(tmp_path, caplog):
    _births_csv(tmp_path / "b.csv", [(2700101, y, y - 1990) for y in range(1996, 2019)])
    demo = tables.read_folder(tmp_path)
    panel = pl.DataFrame({"CO_ENTIDADE": [1, 1, 2], "NU_ANO_CENSO": [2015, 2020, 2020],
                          "CO_MUNICIPIO": [2700101, 2700101, 2799999]})
    with caplog.at_level(logging.INFO):
        out = known.attach(panel, demo).sort("CO_ENTIDADE", "NU_ANO_CENSO")
    row2015 = out.row(0, named=True)
    assert row2015[known.births_column(1)] == 2014 - 1990 and row2015[known.births_column(17)] == 1998 - 1990
    assert row2015[known.births_column(17)] is not None
    row2020 = out.row(1, named=True)  # births end in 2018: 2019's are taken as 2018's
    assert row2020[known.births_column(1)] == row2020[known.births_column(2)] == 2018 - 1990
    assert "births end in 2018" in caplog.text
    assert out.row(2, named=True)[known.births_column(1)] is None and "2799999" in caplog.text  # a logged gap
    early = known.attach(pl.DataFrame({"CO_ENTIDADE": [1], "NU_ANO_CENSO": [2010], "CO_MUNICIPIO": [2700101]}), demo)
    # high school's cohort in 2010 was born in 1993-1995, before the file: unknown, not a partial sum
    assert early.select(known.cohort(catalog.stage("IN_MED"), 0)).item() is None
    assert early.select(known.cohort(AI, 0)).item() == sum(y - 1990 for y in range(2000, 2005))


def test_the_birth_ratio_is_the_target_years_cohort_over_the_origins(tmp_path):
    _births_csv(tmp_path / "b.csv", [(2700101, y, 100 * (y - 1990)) for y in range(1996, 2020)])
    demo = tables.read_folder(tmp_path)
    row = known.attach(pl.DataFrame({"CO_ENTIDADE": [1], "NU_ANO_CENSO": [2019], "CO_MUNICIPIO": [2700101]}), demo)
    cohort = lambda years: sum(100 * (y - 1990) for y in years)  # noqa: E731
    ratio = row.select(known.birth_ratio(AI, 3, row.columns)).item()
    assert ratio == pytest.approx(cohort(range(2012, 2017)) / cohort(range(2009, 2014)))
    creche = catalog.stage("IN_INF_CRE")  # its ages 0-3 in 2024 are born 2020-2024, in 2019 2015-2019: the
    ratio = row.select(known.birth_ratio(creche, 5, row.columns)).item()  # years after 2018 are 2018's
    assert ratio == pytest.approx(cohort([2018] * 4) / cohort([2018, 2018, 2017, 2016]))


def test_demografia_scales_the_last_census_and_is_persistence_without_a_ratio():
    X = np.zeros((3, len(features.FEATURES)), dtype=np.float32)
    X[:, features.ANCHOR_INDEX] = [100, 50, 10]
    X[:, features.BIRTH_RATIO_INDEX] = [0.9, np.nan, 1.2]
    model = models.BirthScaled(features.ANCHOR_INDEX, features.BIRTH_RATIO_INDEX).fit(X)
    np.testing.assert_allclose(model.predict(X), [90, 50, 12], rtol=1e-6)


@pytest.fixture(scope="module")
def census_with_demography(small_census, tmp_path_factory):
    raw, _ = small_census
    cache = tmp_path_factory.mktemp("demo_cache")
    years = sorted(ingest.raw_zips(raw))
    ingest.ingest(raw, cache, years, jobs=1).raise_for_failures()
    return ingest.load_cache(cache, years), tables.read_folder(raw / synthetic_demography.FOLDER)


def test_the_synthetic_census_writes_births_that_tell_its_future(census_with_demography):
    census, demo = census_with_demography
    assert set((census["CO_MUNICIPIO"] // 10).unique()) <= set(demo.births[tables.MUNICIPALITY])
    assert demo.births[tables.YEAR].min() == 1996 and demo.births[tables.YEAR].max() == census["NU_ANO_CENSO"].max()
    panel = known.attach(build_panel(census), demo)
    rows = horizons.stack(features.stage_rows(panel, "IN_FUND_AF", horizons=5), [5])
    persistence = (rows["enrollment_lag1"] - rows["y_true"]).abs().mean()
    scaled = (rows["enrollment_lag1"] * rows["birth_ratio"].fill_null(1.0) - rows["y_true"]).abs().mean()
    assert rows["birth_ratio"].null_count() == 0 and scaled < 0.97 * persistence  # the births carry the trend


def test_demografia_competes_only_where_there_is_demography(census_with_demography):
    census, demo = census_with_demography
    with_births = EnrollmentForecaster(["IN_FUND_AF", "IN_EJA_FUND"], horizons=2, model=FAST, device="cpu", n_jobs=1,
                                       demography=demo).cross_validate(census)
    by_stage = with_births.summary.group_by("etapa").agg(pl.col("modelo").unique())
    offered = {row["etapa"]: set(row["modelo"]) for row in by_stage.iter_rows(named=True)}
    assert models.DEMOGRAPHY in offered["IN_FUND_AF"] and models.DEMOGRAPHY not in offered["IN_EJA_FUND"]  # adults: no ages
    without = EnrollmentForecaster(["IN_FUND_AF"], horizons=2, model=FAST, device="cpu", n_jobs=1).cross_validate(census)
    assert set(without.summary["modelo"]) == set(models.CENSUS_MODEL_NAMES)


def test_no_birth_or_population_after_the_origin_reaches_its_forecasts(census_with_demography):
    """Births of years >= o and population of years >= o changed: every forecast made at o,
    of every model at every horizon, is unchanged (the truth is not demography: it stays)."""
    census, demo = census_with_demography
    origin = 2019
    later = pl.col(tables.YEAR) >= origin
    perturbed = tables.Demography(
        demo.births.with_columns(pl.when(later).then(pl.col(tables.BIRTHS) * 3 + 17).otherwise(pl.col(tables.BIRTHS))
                                 .alias(tables.BIRTHS)),
        demo.population.with_columns(pl.when(later).then(pl.col(c) * 5).otherwise(pl.col(c)).alias(c)
                                     for c in known.POPULATION_COLUMNS), "perturbed")
    assert not perturbed.births.equals(demo.births)

    def made_at(d, at: int) -> pl.DataFrame:
        fc = EnrollmentForecaster(["IN_INF_CRE", "IN_FUND_AI"], horizons=3, model=FAST, device="cpu", n_jobs=1, demography=d)
        predictions = fc.cross_validate(census).predictions
        return predictions.filter(pl.col("ano_origem") == at).sort("etapa", "horizonte", "CO_ENTIDADE")

    original, changed = made_at(demo, origin), made_at(perturbed, origin)
    assert original.height > 50 and original[models.DEMOGRAPHY].is_not_null().all()
    for name in models.MODEL_NAMES:
        np.testing.assert_allclose(original[name].to_numpy(), changed[name].to_numpy(), rtol=0, atol=1e-9, err_msg=name)
    # the perturbed years do reach the next origin's forecasts (creche's cohort, born in the latest
    # known year, at every horizon): the test could fail
    after, after_changed = made_at(demo, origin + 1), made_at(perturbed, origin + 1)
    assert not np.allclose(after[models.DEMOGRAPHY].to_numpy(), after_changed[models.DEMOGRAPHY].to_numpy())


def test_a_run_with_demography_records_it_and_predict_needs_the_same(small_census, tmp_path):
    from typer.testing import CliRunner

    from censo_forecast import pipeline
    from censo_forecast.cli import app
    from censo_forecast.config import load_settings
    from conftest import FAST_RUN

    raw, _ = small_census
    folder = raw / synthetic_demography.FOLDER
    settings = load_settings(None, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", demography=folder,
                             **{**FAST_RUN, "stages": ["IN_FUND_AI"]})
    record = pipeline.run(settings)
    assert record["demography"].startswith(str(folder)) and "births 1996-2025" in record["demography"]
    assert set(record["births_weight"]) == {"IN_FUND_AI"}
    assert set(record["births_weight"]["IN_FUND_AI"]) == {str(h) for h in range(1, settings.horizons + 1)}
    assert set(record["births_weight"]["IN_FUND_AI"].values()) <= set(municipal.WEIGHTS)
    table = pl.read_csv(tmp_path / "out" / "resultados_finais.csv")
    assert models.DEMOGRAPHY in set(table["modelo"])
    common = ["predict", "--models", str(tmp_path / "out" / "models"), "--raw-dir", str(raw), "--cache-dir",
              str(tmp_path / "cache"), "--offline"]
    refused = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "p1")])
    assert refused.exit_code == 1 and "learned from births and population" in refused.output and "--demography" in refused.output
    done = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "p2"), "--demography", str(folder)])
    assert done.exit_code == 0, done.output
    ran, predicted = (pl.read_parquet(p / "previsoes_2026.parquet") for p in (tmp_path / "out", tmp_path / "p2"))
    np.testing.assert_allclose(predicted["previsao"].to_numpy(), ran["previsao"].to_numpy(), rtol=1e-6)
    bad = CliRunner().invoke(app, ["run", "--raw-dir", str(raw), "--out", str(tmp_path / "p3"), "--offline",
                                   "--demography", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and "not a folder" in bad.output and "Traceback" not in bad.output


def test_the_published_forecast_knows_no_birth_after_its_origin(census_with_demography, caplog):
    """The published forecast (features, reconciliation, the municipal births blend of the
    totals) made at the last census year o is unchanged when births and population of years
    >= o change, and changes when year o - 1's births do (what the origin knows)."""
    census, demo = census_with_demography
    origin = 2021
    past = census.filter(pl.col("NU_ANO_CENSO") <= origin)
    fc = EnrollmentForecaster(["IN_INF_PRE", "IN_FUND_AI"], horizons=3, model=FAST, device="cpu", n_jobs=1,
                              demography=demo).fit(past)

    def published(changed: tables.Demography) -> tuple[np.ndarray, np.ndarray]:
        fc.set_params(demography=changed)
        schools = fc.predict(past)
        areas = fc.aggregate(past, schools)
        munis = pl.concat([areas[y]["municipios"] for y in sorted(areas)]).sort("etapa", "horizonte", "CO_MUNICIPIO")
        return schools.sort("etapa", "horizonte", "CO_ENTIDADE")["previsao"].to_numpy(), munis["previsao"].to_numpy()

    def perturbed(years: pl.Expr) -> tables.Demography:
        return tables.Demography(
            demo.births.with_columns(pl.when(years).then(pl.col(tables.BIRTHS) * 2 + 17).otherwise(pl.col(tables.BIRTHS))
                                     .alias(tables.BIRTHS)),
            demo.population.with_columns(pl.when(years).then(pl.col(c) * 5).otherwise(pl.col(c)).alias(c)
                                         for c in known.POPULATION_COLUMNS), "perturbed")

    with caplog.at_level(logging.INFO, logger="censo_forecast.municipal"):
        schools, munis = published(demo)
    assert len(schools) > 100 and "blended with births at weight" in caplog.text  # the blend is in it
    later_schools, later_munis = published(perturbed(pl.col(tables.YEAR) >= origin))
    np.testing.assert_allclose(schools, later_schools, rtol=0, atol=1e-9)
    np.testing.assert_allclose(munis, later_munis, rtol=0, atol=1e-9)
    _, known_munis = published(perturbed(pl.col(tables.YEAR) == origin - 1))
    assert not np.allclose(munis, known_munis)


def test_the_run_record_names_the_births_weight_of_the_stages_published_on_their_own(census_with_demography):
    """All elementary is published as early + final elementary: its own weight is not what its
    totals use, so the record (and the report) leave it out."""
    from censo_forecast import pipeline

    census, demo = census_with_demography
    fc = EnrollmentForecaster(["IN_FUND", "IN_FUND_AI", "IN_FUND_AF"], horizons=2, model=FAST, device="cpu", n_jobs=1,
                              demography=demo).fit(census)
    panel = fc._panel(census)
    assert "IN_FUND" in municipal.choices(panel, fc.calibration_)  # it has one of its own
    assert set(pipeline.births_weights(fc, municipal.choices(panel, fc.calibration_))) == {"IN_FUND_AI", "IN_FUND_AF"}
