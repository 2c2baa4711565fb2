"""All elementary equals early plus final elementary in every forecast, at every level."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from censo_forecast import coherence
from censo_forecast.config import ModelSettings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import ingest
from censo_forecast.outputs import BOUNDS, FORECAST, LOWER_80, MODEL, SUM_OF_PARTS, UPPER_80

FAST = ModelSettings(n_estimators=20, num_leaves=15, max_depth=4)
PARTS = ("IN_FUND_AI", "IN_FUND_AF")


def test_the_sum_replaces_the_total_and_moves_its_bounds():
    frame = pl.DataFrame({
        "CO_ENTIDADE": [1, 1, 1, 2, 2], "NU_ANO_CENSO": [2026] * 5,
        "etapa": ["IN_FUND", "IN_FUND_AI", "IN_FUND_AF", "IN_FUND", "IN_FUND_AI"],
        "modelo": ["Voting", "LightGBM", "Coorte", "Voting", "Voting"],
        FORECAST: [100.0, 70.0, 40.0, 9.0, 3.0],
        LOWER_80: [90.0, 60.0, 30.0, 7.0, 1.0], UPPER_80: [115.0, 80.0, 50.0, 12.0, 6.0],
    })
    out = coherence.schools(frame)
    assert out.select("CO_ENTIDADE", "etapa").equals(frame.select("CO_ENTIDADE", "etapa"))  # rows stay in place
    total = out.filter(pl.col("etapa") == "IN_FUND").sort("CO_ENTIDADE")
    assert total[FORECAST].to_list() == [110.0, 3.0]  # school 2 has no final years: counted 0
    assert total[LOWER_80].to_list() == [100.0, 1.0]  # its own width, re-centred; never below 0
    assert total[UPPER_80].to_list() == [125.0, 6.0]
    assert set(total[MODEL]) == {SUM_OF_PARTS}
    assert out.filter(pl.col("etapa") != "IN_FUND").equals(frame.filter(pl.col("etapa") != "IN_FUND"))


def test_a_total_without_its_parts_stays_and_says_so(caplog):
    frame = pl.DataFrame({"CO_ENTIDADE": [1], "NU_ANO_CENSO": [2026], "etapa": ["IN_FUND"], FORECAST: [100.0]})
    with caplog.at_level(logging.WARNING):
        assert coherence.schools(frame).equals(frame)
    assert "IN_FUND is forecast on its own" in caplog.text


@pytest.fixture(scope="module")
def fitted(small_census, tmp_path_factory):
    raw, _ = small_census
    cache = tmp_path_factory.mktemp("cache")
    ingest.ingest(raw, cache, jobs=2).raise_for_failures()
    census = ingest.load_cache(cache, ingest.cached_years(cache))
    fc = EnrollmentForecaster(["IN_FUND", *PARTS], horizons=2, model=FAST, device="cpu", min_train_years=11, n_jobs=1)
    return fc.fit(census), census


def _identity(frame: pl.DataFrame, keys: list[str], column: str) -> pl.DataFrame:
    wide = frame.pivot(on="etapa", index=keys, values=column).fill_null(0.0)
    return wide.with_columns((pl.col("IN_FUND") - pl.col(PARTS[0]) - pl.col(PARTS[1])).abs().alias("gap"))


def test_every_school_and_area_adds_up(fitted):
    fc, census = fitted
    schools = fc.predict(census)
    gap = _identity(schools, ["CO_ENTIDADE", "NU_ANO_CENSO"], FORECAST)
    assert gap.height > 100 and gap["gap"].max() < 1e-6
    fund = schools.filter(pl.col("etapa") == "IN_FUND")
    assert (fund[LOWER_80] <= fund[FORECAST]).all() and (fund[FORECAST] <= fund[UPPER_80]).all()
    areas = fc.aggregate(census, schools)
    assert sorted(areas) == [2026, 2027]
    for year, levels in areas.items():
        for level, frame in levels.items():
            key = {"municipios": "CO_MUNICIPIO", "ufs": "CO_UF", "brasil": "pais"}[level]
            for column in (FORECAST, "previsao_escolas", "previsao_novas_ofertas", "matriculas_ultimo_ano"):
                assert _identity(frame, [key], column)["gap"].max() < 1e-6 * max(1.0, frame[column].abs().max()), (year, level, column)
            fund = frame.filter(pl.col("etapa") == "IN_FUND")
            for low, high in zip(BOUNDS[::2], BOUNDS[1::2], strict=True):
                assert ((fund[low] <= fund[FORECAST]) & (fund[FORECAST] <= fund[high])).all(), (year, level, low)
