"""Municipal totals blended with births and state totals with the state's own drift, where the
walk-forward says it helps."""

from __future__ import annotations

import polars as pl
import pytest

from censo_forecast import reconcile, statepaths
from censo_forecast.panel import build_panel
from test_forecasting import census_rows

TOTALS = dict(zip(range(2015, 2022), (1000, 1020, 1040, 1060, 1080, 1100, 1120), strict=True))  # four schools, +20 a year


def _panel() -> pl.DataFrame:
    rows = [{"NU_ANO_CENSO": y, "CO_ENTIDADE": s, "CO_UF": 27, "CO_MUNICIPIO": 2704302, "IN_FUND_AF": 1, "QT_MAT_FUND_AF": t // 4}
            for y, t in TOTALS.items() for s in (1, 2, 3, 4)]
    return build_panel(census_rows(rows))


def _calibration(bias: float) -> pl.DataFrame:
    """One year ahead, test years 2017-2021: each school forecast `bias` above its truth."""
    rows = [{"bin": 4, "NU_ANO_CENSO": y, "residual": -bias * t / 4, "CO_MUNICIPIO": 2704302, "CO_UF": 27,
             "previsao": (1 + bias) * t / 4, "horizonte": 1} for y, t in TOTALS.items() if y >= 2017 for _ in range(4)]
    return pl.DataFrame(rows).with_columns(pl.col("bin").cast(pl.Int8), pl.col("CO_UF").cast(pl.Int8), pl.col("horizonte").cast(pl.Int32))


def _schools() -> pl.DataFrame:
    return pl.DataFrame({"CO_ENTIDADE": [1, 2, 3, 4], "CO_UF": 27, "etapa": "IN_FUND_AF", "horizonte": 1, "previsao": 310.0,
                         "limite_inferior_80": 300.0, "limite_superior_80": 320.0}).with_columns(
        pl.col("CO_UF").cast(pl.Int8), pl.col("horizonte").cast(pl.Int32))


def test_history_has_each_states_totals_openings_and_drift():
    history = statepaths.state_history(_panel(), "IN_FUND_AF")
    assert dict(zip(history["NU_ANO_CENSO"], history["total"], strict=True)) == pytest.approx(TOTALS)
    assert history["openings"].to_list() == [None, *[0.0] * 6]  # the first year has no year before
    origin = statepaths.at_origins(history).filter(pl.col("origin") == 2021).row(0, named=True)
    assert origin["drift"] == pytest.approx(1120 / 1100) and origin["new"] == 0.0


def test_a_biased_bottom_up_is_blended_with_the_states_drift_and_the_schools_carry_it():
    """The walk-forward's school sums ran 10 % above the state's totals: the blend (mean of
    bottom-up and the state's drift) halves that error, so the published total is the blend."""
    panel, schools = _panel(), _schools()
    chosen, bottom_up, blend = reconcile.blends(_calibration(0.10), statepaths.state_history(panel, "IN_FUND_AF"))
    assert chosen and bottom_up == pytest.approx(0.10) and blend < bottom_up
    out = reconcile.reconcile(schools, panel, {"IN_FUND_AF": _calibration(0.10)})
    expected = 0.5 * 4 * 310.0 + 0.5 * 1120 * (1120 / 1100)
    assert out["previsao"].sum() == pytest.approx(expected)
    factor = expected / (4 * 310.0)
    assert out["limite_superior_80"].to_list() == pytest.approx([320.0 * factor] * 4)  # bounds move with the schools
    assert out.select("CO_ENTIDADE").equals(schools.select("CO_ENTIDADE"))


def test_an_unbiased_bottom_up_is_published_as_it_is():
    panel, schools = _panel(), _schools()
    assert not reconcile.blends(_calibration(0.0), statepaths.state_history(panel, "IN_FUND_AF"))[0]
    assert reconcile.reconcile(schools, panel, {"IN_FUND_AF": _calibration(0.0)}).equals(schools)
    assert reconcile.reconcile(schools, panel, {}).equals(schools)  # no walk-forward: bottom-up


def _births_calibration(school_bias: float, births_bias: float) -> pl.DataFrame:
    """Two municipalities of two schools, one and two years ahead, test years 2017-2021: the
    chosen model `school_bias` above each truth, Demografia `births_bias` above it."""
    rows = []
    for h in (1, 2):
        for year in range(2017, 2022):
            for muni, schools in ((2704302, (1, 2)), (2700102, (3, 4))):
                for school in schools:
                    truth = 100.0 + 10 * school
                    forecast = truth * (1 + school_bias)
                    rows.append({"bin": 4, "NU_ANO_CENSO": year, "residual": truth - forecast, "CO_MUNICIPIO": muni,
                                 "CO_UF": 27, "previsao": forecast, "previsao_demografia": truth * (1 + births_bias),
                                 "horizonte": h})
    return pl.DataFrame(rows).with_columns(pl.col("bin").cast(pl.Int8), pl.col("CO_UF").cast(pl.Int8),
                                           pl.col("horizonte").cast(pl.Int32))


def _births_schools() -> pl.DataFrame:
    return pl.DataFrame({"CO_ENTIDADE": [1, 2, 3, 4], "CO_MUNICIPIO": [2704302, 2704302, 2700102, 2700102], "CO_UF": 27,
                         "etapa": "IN_FUND_AI", "horizonte": 1, "previsao": [110.0, 130.0, 140.0, 150.0],
                         "previsao_demografia": [100.0, 100.0, 150.0, 150.0], "limite_superior_80": [120.0, 140.0, 150.0, 160.0]}
                        ).with_columns(pl.col("CO_UF").cast(pl.Int8), pl.col("horizonte").cast(pl.Int32))


def test_municipal_totals_follow_births_where_the_walk_forward_found_them_right():
    """Schools summed 8 % high where the births-scaled totals were right, and no school got worse
    by it: the weight goes to births, and each municipality's schools carry its factor."""
    weight, scores = reconcile.birth_weight(_births_calibration(0.08, 0.0))
    assert weight == 1.0 and scores[1.0][0] < scores[0.5][0] < scores[0.0][0]
    schools = _births_schools()
    out, adjusted = reconcile.municipal(schools, {"IN_FUND_AI": _births_calibration(0.08, 0.0)})
    assert out["previsao"].to_list() == pytest.approx([200 * 110 / 240, 200 * 130 / 240, 300 * 140 / 290, 300 * 150 / 290])
    assert out["limite_superior_80"][0] == pytest.approx(120.0 * 200 / 240)
    assert out.select("CO_ENTIDADE").equals(schools.select("CO_ENTIDADE"))
    # the state step decides on what the blend would have published in the walk-forward
    assert adjusted["IN_FUND_AI"]["previsao"].sum() == pytest.approx(_births_calibration(0.08, 0.0)["previsao_demografia"].sum())


def test_births_that_would_hurt_the_schools_or_the_totals_are_left_out():
    assert reconcile.birth_weight(_births_calibration(0.0, 0.08))[0] == 0.0  # births were the biased ones
    # one school right, its neighbour forecast to close (0, truth 100): births make the total right
    # by doubling the right one, so the schools' error doubles: beyond the tolerance
    calibration = pl.DataFrame({"bin": 4, "NU_ANO_CENSO": [2020, 2020], "residual": [0.0, 100.0], "CO_MUNICIPIO": 2704302,
                                "CO_UF": 27, "previsao": [100.0, 0.0], "previsao_demografia": [100.0, 100.0], "horizonte": 1})
    weight, scores = reconcile.birth_weight(calibration.with_columns(pl.col("horizonte").cast(pl.Int32)))
    assert scores[1.0][0] == 0.0 < scores[0.0][0] and scores[1.0][1] == 2 * scores[0.0][1] and weight == 0.0
    schools = _births_schools().drop("previsao_demografia")  # no demography: nothing to blend with
    assert reconcile.municipal(schools, {"IN_FUND_AI": _births_calibration(0.08, 0.0)})[0].equals(schools)
