"""Municipal totals blended with births: the weight the walk-forward chooses, the totals it
publishes (the schools untouched), the walk-forward totals their intervals are calibrated on,
and nothing without demography."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from censo_forecast import forecast, municipal
from censo_forecast.demography import known
from censo_forecast.outputs import (
    BIRTHS_ADJUSTMENT,
    FORECAST,
    HORIZON,
    LAST_ENROLLMENT,
    LOWER_80,
    MUNICIPALITIES,
    NEW_OFFERINGS_FORECAST,
    SCHOOLS_FORECAST,
    STAGE,
    STATES,
    UPPER_95,
)

YEARS = range(2010, 2017)
LAST = YEARS[-1]
MUNIS = (2700101, 2700200)


def births(muni: int, year: int) -> float:
    """A birth series that rises and falls, differently per municipality."""
    return 100.0 + 15 * ((year + muni) % 4) + (muni % 1000) / 10


def enrollment(muni: int, year: int) -> float:
    """Early elementary (ages 6-10) exactly its births: births foretell it perfectly."""
    return sum(births(muni, year - age) for age in range(6, 11))


def panel() -> pl.DataFrame:
    """Two schools per municipality, each half the municipality's enrollment, every year, with
    the births each year knows and a population (`known.attach`'s columns)."""
    rows = []
    for muni in MUNIS:
        for school in (1, 2):
            for year in YEARS:
                rows.append({"CO_ENTIDADE": muni * 10 + school, "NU_ANO_CENSO": year, "CO_MUNICIPIO": muni, "CO_UF": 27,
                             "active": True, "IN_FUND_AI": 1, "QT_MAT_FUND_AI": enrollment(muni, year) / 2,
                             **{known.births_column(j): births(muni, year - j) for j in range(known.BIRTHS_LAG, known.MAX_AGE + 1)},
                             **dict.fromkeys(known.POPULATION_COLUMNS, 0.0)})
    return pl.DataFrame(rows)


def calibration(bias: float, one_year_bias: float | None = None) -> pl.DataFrame:
    """Walk-forward rows of a model that overshoots every school by `bias` (x 1 + bias); one
    year ahead by `one_year_bias` where given."""
    rows = []
    for h in (1, 2, 3):
        bias_h = one_year_bias if h == 1 and one_year_bias is not None else bias
        for year in range(YEARS[0] + 2 + h, LAST + 1):
            for muni in MUNIS:
                for _school in (1, 2):
                    actual = enrollment(muni, year) / 2
                    rows.append({"bin": 0, "NU_ANO_CENSO": year, "residual": -bias_h * actual, "CO_MUNICIPIO": muni,
                                 "CO_UF": 27, FORECAST: (1 + bias_h) * actual, HORIZON: h})
    return pl.DataFrame(rows).cast({HORIZON: pl.Int32, "bin": pl.Int8})


def forecasts(bias: float, h: int) -> pl.DataFrame:
    """One horizon's school rows at the last census year, overshooting by `bias`."""
    rows = [{"CO_ENTIDADE": muni * 10 + school, "CO_MUNICIPIO": muni, "CO_UF": 27, STAGE: "IN_FUND_AI", HORIZON: h,
             LAST_ENROLLMENT: enrollment(muni, LAST) / 2, FORECAST: (1 + bias) * enrollment(muni, LAST + h) / 2}
            for muni in MUNIS for school in (1, 2)]
    return pl.DataFrame(rows).cast({HORIZON: pl.Int32})


def totals(data: pl.DataFrame, table: pl.DataFrame, bias: float, h: int, chosen: dict) -> dict[str, pl.DataFrame]:
    """The area totals one horizon publishes, with the births blend the walk-forward chose."""
    choice = chosen.get("IN_FUND_AI")
    walk_forward = municipal.walk_forward_totals(table, data, "IN_FUND_AI", choice)
    births = (choice.at(h), municipal.births_totals(choice, "IN_FUND_AI", h)) if choice else None
    return forecast.area_totals(forecasts(bias, h), walk_forward.filter(pl.col(HORIZON) == h),
                                forecast.new_offerings(data, "IN_FUND_AI"), "IN_FUND_AI", years_ahead=h, births=births)


def test_births_that_foretell_the_totals_get_full_weight_and_the_published_totals_follow_them(caplog):
    table = calibration(bias=0.2)
    with caplog.at_level(logging.INFO, logger="censo_forecast.municipal"):
        chosen = municipal.choices(panel(), {"IN_FUND_AI": table}, say=True)
    assert list(chosen) == ["IN_FUND_AI"] and chosen["IN_FUND_AI"].weight == chosen["IN_FUND_AI"].one_year == 1.0
    for errors in (chosen["IN_FUND_AI"].errors, chosen["IN_FUND_AI"].one_year_errors):
        assert errors[1.0] < 1e-9 and abs(errors[0.0] - 0.2) < 1e-9  # 20 % over
    assert ("IN_FUND_AI: municipal totals one year ahead blended with births at weight 1, two years ahead and beyond "
            "blended with births at weight 1 (") in caplog.text
    for h in (1, 2, 3):
        areas = totals(panel(), table, 0.2, h, chosen)
        munis = areas[MUNICIPALITIES].sort("CO_MUNICIPIO")
        np.testing.assert_allclose(munis[FORECAST].to_numpy(), [enrollment(m, LAST + h) for m in MUNIS], rtol=1e-9)
        # the schools stay as forecast; the blend is a column of its own, and the parts add up
        np.testing.assert_allclose(munis[SCHOOLS_FORECAST].to_numpy(), [1.2 * enrollment(m, LAST + h) for m in MUNIS], rtol=1e-9)
        np.testing.assert_allclose(munis[FORECAST].to_numpy(), (munis[SCHOOLS_FORECAST] + munis[NEW_OFFERINGS_FORECAST]
                                                                + munis[BIRTHS_ADJUSTMENT]).to_numpy(), rtol=1e-12)
        state = areas[STATES]
        assert state[FORECAST].item() == pytest.approx(munis[FORECAST].sum()) and state[BIRTHS_ADJUSTMENT].item() < 0
        # the intervals are calibrated on the walk-forward totals as published: exact here, so they are the point
        np.testing.assert_allclose(munis[LOWER_80].to_numpy(), munis[FORECAST].to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(munis[UPPER_95].to_numpy(), munis[FORECAST].to_numpy(), rtol=1e-9)


def test_walk_forward_totals_are_the_published_totals_of_each_test_year_against_the_census():
    table = calibration(bias=0.2)
    chosen = municipal.choices(panel(), {"IN_FUND_AI": table})
    for choice, factor in ((chosen["IN_FUND_AI"], 1.0), (None, 1.2)):  # blended at weight 1, and bottom-up
        rows = municipal.walk_forward_totals(table, panel(), "IN_FUND_AI", choice)
        assert rows.height == table.select("CO_MUNICIPIO", "NU_ANO_CENSO", HORIZON).n_unique()
        actual = np.array([enrollment(m, y) for m, y in rows.select("CO_MUNICIPIO", "NU_ANO_CENSO").iter_rows()])
        np.testing.assert_allclose(rows["y_true"].to_numpy(), actual, rtol=1e-12)
        np.testing.assert_allclose(rows[FORECAST].to_numpy(), factor * actual, rtol=1e-9)
    # a municipality whose schools all stopped offering the stage counts 0 that year, not nothing
    stopped = panel().with_columns(pl.when((pl.col("CO_MUNICIPIO") == MUNIS[1]) & (pl.col("NU_ANO_CENSO") == LAST))
                                   .then(0).otherwise(pl.col("IN_FUND_AI")).alias("IN_FUND_AI"))
    rows = municipal.walk_forward_totals(table, stopped, "IN_FUND_AI", None)
    gone = rows.filter((pl.col("CO_MUNICIPIO") == MUNIS[1]) & (pl.col("NU_ANO_CENSO") == LAST))
    assert gone.height == 3 and (gone["y_true"] == 0).all()  # one per horizon
    shorter = municipal.walk_forward_totals(table, panel().filter(pl.col("NU_ANO_CENSO") < LAST), "IN_FUND_AI", None)
    assert shorter["NU_ANO_CENSO"].max() == LAST - 1 and (shorter["y_true"] > 0).all()  # a year it lacks is not a 0
    # bottom-up, the 20 % the schools overshoot is the municipal range: the published total's own
    # error (truth / forecast - 1 = -1/6 in every municipality), from the last three test years,
    # a bias common to all of them, so it counts 3 / (3 + 2) of itself (intervals.municipal_errors)
    munis = totals(panel(), table, 0.2, 1, {})[MUNICIPALITIES]
    np.testing.assert_allclose((munis[LOWER_80] / munis[FORECAST]).to_numpy(), 1 - (1 - 1 / 1.2) * 3 / 5, rtol=1e-9)


def test_one_year_ahead_chooses_its_own_weight_and_the_published_totals_follow_each_horizon():
    """Schools exact one year ahead and 20 % over beyond: births take no weight one year ahead
    (the stage's weight, averaged over the horizons, would give it 1) and all of it further
    ahead, in the published totals and in the walk-forward totals their ranges are calibrated on."""
    table = calibration(bias=0.2, one_year_bias=0.0)
    choice = municipal.choices(panel(), {"IN_FUND_AI": table})["IN_FUND_AI"]
    assert (choice.one_year, choice.weight) == (0.0, 1.0)
    assert choice.one_year_errors[0.0] < 1e-9 and choice.errors[0.0] == pytest.approx(0.4 / 3)  # mean of 0, 20 and 20 %
    assert choice.weights([1, 2, 3]) == {1: 0.0, 2: 1.0, 3: 1.0}
    walk_forward = municipal.walk_forward_totals(table, panel(), "IN_FUND_AI", choice)
    np.testing.assert_allclose(walk_forward[FORECAST].to_numpy(), walk_forward["y_true"].to_numpy(), rtol=1e-9)
    one = totals(panel(), table, 0.0, 1, {"IN_FUND_AI": choice})[MUNICIPALITIES]
    assert (one[BIRTHS_ADJUSTMENT] == 0).all()  # bottom-up one year ahead
    two = totals(panel(), table, 0.2, 2, {"IN_FUND_AI": choice})[MUNICIPALITIES].sort("CO_MUNICIPIO")
    np.testing.assert_allclose(two[FORECAST].to_numpy(), [enrollment(m, LAST + 2) for m in MUNIS], rtol=1e-9)


def test_a_bottom_up_that_is_right_keeps_weight_zero_and_its_totals():
    table = calibration(bias=0.0)
    noisy = panel().with_columns(pl.col(known.births_column(3)) * 1.3)  # births now mislead
    chosen = municipal.choices(noisy, {"IN_FUND_AI": table})
    assert chosen["IN_FUND_AI"].weight == chosen["IN_FUND_AI"].one_year == 0.0
    walk_forward = municipal.walk_forward_totals(table, noisy, "IN_FUND_AI", chosen["IN_FUND_AI"])
    np.testing.assert_allclose(walk_forward[FORECAST].to_numpy(), walk_forward["y_true"].to_numpy(), rtol=1e-9)


def test_a_municipality_without_a_complete_cohort_keeps_its_bottom_up_total():
    gap = panel().with_columns(pl.when(pl.col("CO_MUNICIPIO") == MUNIS[1]).then(None)
                               .otherwise(pl.col(known.births_column(8))).alias(known.births_column(8)))
    table = calibration(bias=0.2)
    chosen = municipal.choices(gap, {"IN_FUND_AI": table})
    assert chosen["IN_FUND_AI"].weight == 1.0
    assert municipal.births_totals(chosen["IN_FUND_AI"], "IN_FUND_AI", 2).sort("CO_MUNICIPIO")["total"].to_list()[1] is None
    munis = totals(gap, table, 0.2, 2, chosen)[MUNICIPALITIES].sort("CO_MUNICIPIO")
    np.testing.assert_allclose(munis[FORECAST].to_numpy(), [enrollment(MUNIS[0], LAST + 2), 1.2 * enrollment(MUNIS[1], LAST + 2)],
                               rtol=1e-9)
    assert munis[BIRTHS_ADJUSTMENT][1] == 0.0


def test_a_blended_total_is_never_below_zero():
    table = pl.DataFrame({"CO_MUNICIPIO": [MUNIS[0]], "total": [-50.0]})
    walk_forward = municipal.walk_forward_totals(calibration(0.0), panel(), "IN_FUND_AI", None).head(0)
    areas = forecast.area_totals(forecasts(0.0, 1).filter(pl.col("CO_MUNICIPIO") == MUNIS[0]), walk_forward,
                                 forecast.new_offerings(panel(), "IN_FUND_AI"), "IN_FUND_AI", births=(1.0, table))
    row = areas[MUNICIPALITIES].filter(pl.col("CO_MUNICIPIO") == MUNIS[0])
    assert row[FORECAST].item() == 0.0 and row[BIRTHS_ADJUSTMENT].item() == -row[SCHOOLS_FORECAST].item()


def test_without_demography_or_school_ages_nothing_is_blended():
    table = calibration(bias=0.2)
    assert municipal.choices(panel().drop(known.BIRTH_COLUMNS), {"IN_FUND_AI": table}) == {}
    assert municipal.choices(panel(), {"IN_EJA_FUND": table}) == {}  # no ages: births say nothing of it
    munis = totals(panel(), table, 0.2, 1, {})[MUNICIPALITIES]
    assert (munis[BIRTHS_ADJUSTMENT] == 0).all()
    np.testing.assert_allclose(munis[FORECAST].to_numpy(), munis[SCHOOLS_FORECAST].to_numpy())
