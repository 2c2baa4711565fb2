"""State paths within the state's record: a forecast year cannot move a state's total of a
stage by more than its census ever did in one year."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from censo_forecast import statepaths
from censo_forecast.panel import build_panel
from test_forecasting import census_rows


def _panel() -> pl.DataFrame:
    """State 27: two schools of final elementary, 100 + 100 students changing by 4 % at most;
    state 26: one school, 50 students every year."""
    rows = []
    for year, total in zip(range(2018, 2022), (200, 208, 200, 204), strict=True):
        rows += [{"NU_ANO_CENSO": year, "CO_ENTIDADE": s, "CO_UF": 27, "CO_MUNICIPIO": 2704302, "IN_FUND_AF": 1,
                  "QT_MAT_FUND_AF": total // 2} for s in (1, 2)]
        rows.append({"NU_ANO_CENSO": year, "CO_ENTIDADE": 3, "CO_UF": 26, "CO_MUNICIPIO": 2611606, "IN_FUND_AF": 1,
                     "QT_MAT_FUND_AF": 50})
    return build_panel(census_rows(rows))


def _forecasts(path_27: list[float], path_26: list[float]) -> pl.DataFrame:
    rows = []
    for h, (a, b) in enumerate(zip(path_27, path_26, strict=True), start=1):
        for school, uf, value, last in ((1, 27, a / 2, 102.0), (2, 27, a / 2, 102.0), (3, 26, b, 50.0)):
            rows.append({"CO_ENTIDADE": school, "CO_UF": uf, "etapa": "IN_FUND_AF", "horizonte": h, "NU_ANO_CENSO": 2021 + h,
                         "matriculas_ultimo_ano": last, "previsao": value, "limite_inferior_80": value * 0.9,
                         "limite_superior_80": value * 1.1})
    return pl.DataFrame(rows).with_columns(pl.col("CO_UF").cast(pl.Int8), pl.col("horizonte").cast(pl.Int32))


def test_the_largest_change_on_record_per_state_and_stage():
    limits = statepaths.largest_changes(_panel(), ["IN_FUND_AF"]).sort("CO_UF")
    assert limits["CO_UF"].to_list() == [26, 27]
    assert limits["limit"].to_list() == pytest.approx([0.0, 0.04])  # 200 -> 208 -> 200: 4 %


def test_a_path_beyond_the_record_is_scaled_back_and_one_within_it_is_left_alone():
    schools = _forecasts([208.0, 250.0, 250.0], [50.0, 50.0, 50.0])  # 27: +2 %, then +20 %
    out = statepaths.limit(schools, _panel())
    assert out.select("CO_ENTIDADE", "horizonte").equals(schools.select("CO_ENTIDADE", "horizonte"))  # rows in place
    path = out.filter(pl.col("CO_UF") == 27).group_by("horizonte").agg(pl.col("previsao").sum()).sort("horizonte")
    assert path["previsao"].to_list() == pytest.approx([208.0, 208.0 * 1.04, 208.0 * 1.04**2])
    changes = np.diff([204.0, *path["previsao"].to_list()]) / np.array([204.0, *path["previsao"].to_list()[:-1]])
    assert np.all(np.abs(changes) <= 0.04 + 1e-12)
    scaled = out.filter((pl.col("CO_UF") == 27) & (pl.col("horizonte") == 2))
    assert (scaled["limite_superior_80"] / scaled["previsao"]).to_list() == pytest.approx([1.1, 1.1])  # bounds scaled alike
    assert out.filter(pl.col("CO_UF") == 26).equals(schools.filter(pl.col("CO_UF") == 26))  # within its record (no change)


def test_a_path_within_the_record_is_returned_unchanged():
    schools = _forecasts([206.0, 204.0, 210.0], [50.0, 50.0, 50.0])
    assert statepaths.limit(schools, _panel()).equals(schools)


def test_the_new_offerings_expected_count_in_the_path():
    """Flat schools plus 10 new students a year: +4.9 % the first year, beyond the 4 % record;
    the schools give way so that the published total (schools + new offerings) meets it."""
    schools = _forecasts([204.0, 204.0, 204.0], [50.0, 50.0, 50.0])
    new = pl.DataFrame({"etapa": ["IN_FUND_AF"], "CO_UF": [27], "new": [10.0]})
    out = statepaths.limit(schools, _panel(), new)
    sums = out.filter(pl.col("CO_UF") == 27).group_by("horizonte").agg(pl.col("previsao").sum()).sort("horizonte")["previsao"]
    totals = [s + 10.0 * h for h, s in enumerate(sums.to_list(), start=1)]
    assert totals == pytest.approx([204.0 * 1.04, 204.0 * 1.04**2, 204.0 * 1.04**3])
    assert statepaths.limit(schools, _panel()).equals(schools)  # without new offerings the flat path is within the record
