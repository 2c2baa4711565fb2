"""State totals reconciled with a forecast made at the state's own level, where the walk-forward
says it helps.

A state's published total is bottom-up: its schools' forecasts plus the new offerings
expected. A sum of school forecasts made to be right school by school can drift as a
total (a school's forecast is a typical value, not an expected one). The state's own path
offers a second forecast of the same total: its drift, the census total at the origin times
its last yearly change, compounded over the horizon and damped (`drift_path`: the k-th year
ahead counts damping.DAMPING ** k of that change, as in damped-trend smoothing), so that
one steep year does not compound five times. For each stage the walk-forward picks
bottom-up or the mean of the two, whichever had the lower mean absolute % error of state
totals over its test years and horizons (the calibration table's sums of the chosen model,
with the new offerings the origin expected, against the census totals); the schools of a
state then carry the change, all by one factor, so every level still adds up.

On the real census of Alagoas (benchmarks/README.md, "Reconciliation") the mean of the two
cut the state error five years ahead from 20.2 % to 10.9 % for pre-school and from 9.8 % to
6.1 % for early elementary, and raised creche's from 10.1 % to 12.5 %: hence a choice per
stage, not a rule. One choice per stage rather than per horizon: the later horizons have
two to five test years, too few to choose by (and one year ahead chosen apart from them
measured worse: high school's worst origin one year ahead fell from +0.4 to -1.7 %).

Damping (benchmarks/README.md, "2026-12-07 (second session)"): undamped, the drift of final
elementary at the origins 2013-2015 (-5 to -6 % a year) put its state total 6-11 % under the
census five years ahead. With a damping of 0.8 its state error five years ahead fell from 7.2 to
3.7 % and its per-school skill from +2.9 to +8.1 %; the mean state error over the five major
stages and horizons from 4.56 to 4.48 %. Creche's schools, now bottom-up at every origin,
gained (+2.0 to +4.8 % five years ahead) and its state total lost (10.3 to 11.8 %). 0.6 and
0.9 measured worse (4.66 and 4.54 %).

BLEND: the drift's weight chosen per stage among 0.25-1 instead ("2026-12-07 (third
session)") took the drift alone for four stages and cost pre-school's schools 2-3 points of
skill four and five years ahead, the state totals no better (mean 4.39 against 4.37 %).
"""

from __future__ import annotations

import logging

import polars as pl

from censo_forecast import damping
from censo_forecast.inep.catalog import YEAR
from censo_forecast.outputs import BOUNDS, FORECAST, HORIZON, STAGE
from censo_forecast.statepaths import at_origins, state_history

log = logging.getLogger(__name__)
BLEND = 0.5  # the state's drift's weight when the walk-forward chooses the mean


def drift_path(horizon: int | pl.Expr) -> pl.Expr:
    """The state's drift `horizon` years ahead (an int or an expression): its last yearly
    change, damped (`damping.steps`), compounded."""
    return pl.col("total") * pl.col("drift").pow(damping.steps(horizon))


def blended(bottom_up: pl.Expr, horizon: int | pl.Expr) -> pl.Expr:
    """A state's total blended with its drift: what the walk-forward scores and what the
    published schools are scaled to, so the two cannot part."""
    return (1 - BLEND) * bottom_up + BLEND * drift_path(horizon)


def errors(calibration: pl.DataFrame, history: pl.DataFrame, h: int) -> tuple[float, float] | None:
    """(bottom-up's, the blend's) mean absolute % error of state totals at one horizon, over
    its walk-forward rows (`intervals.calibration_table`); None when no test year can compare."""
    origins = at_origins(history).filter(pl.col("drift").is_not_null() & pl.col("new").is_not_null())
    sums = (calibration.group_by(YEAR, "CO_UF").agg(pl.col(FORECAST).sum().alias("schools"))
            .with_columns((pl.col(YEAR) - h).alias("origin"))
            .join(origins, on=["CO_UF", "origin"], how="inner")
            .join(history.select("CO_UF", YEAR, pl.col("total").alias("actual")), on=["CO_UF", YEAR], how="inner")
            .filter(pl.col("actual") > 0))
    if sums.height == 0:
        return None
    bottom_up = pl.col("schools") + h * pl.col("new")
    row = sums.select((bottom_up / pl.col("actual") - 1).abs().mean(),
                      (blended(bottom_up, h) / pl.col("actual") - 1).abs().mean()).row(0)
    return float(row[0]), float(row[1])


def blends(calibration: pl.DataFrame, history: pl.DataFrame) -> tuple[bool, float, float]:
    """Whether the stage's state totals are blended, and the two mean errors it was decided by:
    each validated horizon's, averaged (one decision for the stage: a horizon's few test
    years alone would make it by chance)."""
    found = [e for h in sorted(calibration[HORIZON].unique().to_list()) if (e := errors(
        calibration.filter(pl.col(HORIZON) == h), history, h)) is not None]
    if not found:
        return False, float("nan"), float("nan")
    bottom_up, blend = (sum(e[i] for e in found) / len(found) for i in (0, 1))
    return blend < bottom_up, bottom_up, blend


def reconcile(schools: pl.DataFrame, panel: pl.DataFrame, calibration: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """School forecasts with each state's total blended with its drift in the stages where the
    walk-forward chose it (module docstring); rows keep their order. A stage without
    calibration stays bottom-up."""
    factors = []
    last = panel[YEAR].max()
    for flag in schools[STAGE].unique(maintain_order=True).to_list():
        if flag not in calibration:
            continue
        history = state_history(panel, flag)
        chosen, bottom_up_error, blend_error = blends(calibration[flag], history)
        log.info("%s: state totals %s (walk-forward mean absolute error of state totals: bottom-up %.1f %%, "
                 "blended with the state's drift %.1f %%)", flag, "blended with the state's drift" if chosen else "bottom-up",
                 100 * bottom_up_error, 100 * blend_error)
        if not chosen:
            continue
        now = at_origins(history).filter(pl.col("origin") == last)
        rows = schools.filter(pl.col(STAGE) == flag)
        sums = (rows.group_by("CO_UF", HORIZON).agg(pl.col(FORECAST).sum().alias("schools"))
                .join(now.cast({"CO_UF": rows.schema["CO_UF"]}), on="CO_UF", how="inner")
                .filter((pl.col("schools") > 0) & pl.col("drift").is_not_null()))
        new = pl.col(HORIZON) * pl.col("new").fill_null(0.0)
        target = blended(pl.col("schools") + new, pl.col(HORIZON))
        factors.append(sums.select(pl.lit(flag).alias(STAGE), "CO_UF", HORIZON,
                                   ((target - new).clip(lower_bound=0.0) / pl.col("schools")).alias("_factor")))
    if not factors:
        return schools
    scale = pl.concat(factors).cast({"CO_UF": schools.schema["CO_UF"]})
    scaled = [c for c in (FORECAST, *BOUNDS) if c in schools.columns]
    return (schools.join(scale, on=[STAGE, "CO_UF", HORIZON], how="left", maintain_order="left")
            .with_columns((pl.col(c) * pl.col("_factor").fill_null(1.0)).alias(c) for c in scaled).drop("_factor"))
