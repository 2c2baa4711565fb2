"""State totals blended with the state's own drift, where the walk-forward says it helps."""

from __future__ import annotations

import math

import polars as pl
import pytest

from censo_forecast import damping, reconcile, statepaths
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
    expected = 0.5 * 4 * 310.0 + 0.5 * 1120 * (1120 / 1100) ** damping.DAMPING
    assert out["previsao"].sum() == pytest.approx(expected)
    factor = expected / (4 * 310.0)
    assert out["limite_superior_80"].to_list() == pytest.approx([320.0 * factor] * 4)  # bounds move with the schools
    assert out.select("CO_ENTIDADE").equals(schools.select("CO_ENTIDADE"))


def test_an_unbiased_bottom_up_is_published_as_it_is():
    panel, schools = _panel(), _schools()
    assert not reconcile.blends(_calibration(0.0), statepaths.state_history(panel, "IN_FUND_AF"))[0]
    assert reconcile.reconcile(schools, panel, {"IN_FUND_AF": _calibration(0.0)}).equals(schools)
    assert reconcile.reconcile(schools, panel, {}).equals(schools)  # no walk-forward: bottom-up


def test_the_states_drift_is_damped_so_a_steep_last_year_does_not_compound_over_five():
    """A state that lost 6 % in its last year: the drift's path loses DAMPING times the last
    year's log change in the first year ahead and DAMPING times the year before's in each next
    one, so five years ahead it has lost far less than 1 - 0.94 ** 5 and it never loses more
    than DAMPING / (1 - DAMPING) last years' change."""
    state = pl.DataFrame({"total": [1000.0], "drift": [0.94]})
    path = [state.select(reconcile.drift_path(h)).item() for h in range(0, 6)]
    assert path[0] == pytest.approx(1000.0)
    steps = [math.log(b / a) for a, b in zip(path, path[1:], strict=False)]
    assert steps[0] == pytest.approx(damping.DAMPING * math.log(0.94))
    assert [b / a for a, b in zip(steps, steps[1:], strict=False)] == pytest.approx([damping.DAMPING] * 4)
    limit = 1000 * 0.94 ** (damping.DAMPING / (1 - damping.DAMPING))  # however far ahead, never below this
    assert 1000 * 0.94 ** 5 < limit < path[5] < path[0]
    by_column = pl.DataFrame({"total": [1000.0] * 3, "drift": [0.94] * 3, "horizonte": [1, 3, 5]}).select(
        reconcile.drift_path(pl.col("horizonte")))
    assert by_column.to_series().to_list() == pytest.approx([path[1], path[3], path[5]])
