"""`Coorte` done the way the field does it, and bounded: ratios from schools that offered the
stage both years, pre-school's intake from its own past (not from creche's few leavers), and
no forecast above the stated bound at any horizon."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from censo_forecast import cohort, features
from censo_forecast.panel import build_panel
from test_forecasting import census_rows

FIXTURE = Path(__file__).parent / "fixtures" / "real_cohort_explosion.csv"


def real_rows() -> pl.DataFrame:
    """Two real schools of Alagoas (INEP's values): 27306011 in Maceió was active 2008-2010
    without elementary classes and opened them with 440 pupils in 2011."""
    return census_rows(pl.read_csv(FIXTURE).to_dicts())


def test_a_school_opening_the_stage_does_not_explode_its_ratio():
    """Before: every pupil of the opening year counted as moving up from a cohort of 0, the
    ratio came out at 16 a year and five years ahead Coorte forecast 10**8 pupils."""
    rows = features.stage_rows(build_panel(real_rows()), "IN_FUND", horizons=5)
    school = rows.filter((pl.col("CO_ENTIDADE") == 27306011) & (pl.col("origin_year") == 2011)).row(0, named=True)
    low, high = cohort.RATIO_BOUNDS
    assert low <= school["cohort_ratio"] <= high
    assert school["y_true_1"] == 472
    assert abs(school["cohort_forecast"] - 472) < 0.25 * 472  # one year ahead, near the truth
    bound = cohort.BOUND_FACTOR * 440 + school["muni_feeder_leaving_lag1"]  # the largest it ever had: 440
    for h in range(1, 6):
        assert school[cohort.forecast_column(h)] <= bound + 1e-3, h


def test_no_forecast_exceeds_the_bound_at_any_horizon():
    """A school that takes twice its municipality's feeding cohort and a cohort that jumps from
    10 to 1,000 (a pre-school that opened): Coorte stops at the bound, 3 x the largest
    enrollment the school ever had plus that cohort, at every horizon."""
    rows = []
    for year, early, pre in zip(range(2012, 2016), (100, 100, 100, 125), (20, 20, 20, 2000), strict=True):
        rows.append({"NU_ANO_CENSO": year, "CO_ENTIDADE": 1, "IN_FUND_AI": 1, "QT_MAT_FUND_AI": early})
        rows.append({"NU_ANO_CENSO": year, "CO_ENTIDADE": 2, "IN_INF_PRE": 1, "QT_MAT_INF_PRE": pre})
    frame = features.stage_rows(build_panel(census_rows(rows)), "IN_FUND_AI", horizons=5)
    last = frame.filter((pl.col("CO_ENTIDADE") == 1) & (pl.col("origin_year") == 2015)).row(0, named=True)
    assert last["muni_feeder_leaving_lag1"] == 1000 and last["intake_share"] > 2  # 2,000 pupils of intake, unbounded
    bound = cohort.BOUND_FACTOR * 125 + 1000
    assert [last[cohort.forecast_column(h)] for h in range(1, 6)] == pytest.approx([bound] * 5)
    everywhere = frame.select(pl.max_horizontal(cohort.forecast_column(h) for h in range(1, 6))).to_series()
    assert (everywhere <= bound + 1e-3).all()


def test_pre_school_intake_is_its_own_not_a_share_of_creche_leavers():
    """A municipality whose creche cohort was 1 pupil and then 30 (a creche opening): a share of
    creche's leavers would put 55 x 30 pupils into a 110-pupil pre-school; its own intake does not."""
    rows = []
    for year in range(2012, 2019):
        rows.append({"NU_ANO_CENSO": year, "CO_ENTIDADE": 1, "IN_INF_PRE": 1, "QT_MAT_INF_PRE": 110})
        rows.append({"NU_ANO_CENSO": year, "CO_ENTIDADE": 2, "IN_INF_CRE": 1, "QT_MAT_INF_CRE": 4 if year < 2017 else 120})
    frame = features.stage_rows(build_panel(census_rows(rows)), "IN_INF_PRE", horizons=2)
    school = frame.filter((pl.col("CO_ENTIDADE") == 1) & (pl.col("origin_year") == 2017)).row(0, named=True)
    assert school["muni_feeder_leaving_lag1"] == 30  # the cohort is there, and is not used
    assert school["intake_share"] is None
    assert school["cohort_forecast"] == pytest.approx(110, rel=0.01)
