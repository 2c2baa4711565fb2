"""Municipal and state totals reconciled with forecasts made at their own level, where the
walk-forward says it helps.

Municipalities first, where births are given (`--demography`): a municipality's total of a
stage is its schools' forecasts, or a weighted mean of those and the births-scaled total
(each school's last census times its municipality's birth ratio: `Demografia`, summed),
with the weight in BIRTH_WEIGHTS whose walk-forward municipal totals had the lowest
weighted absolute % error over the stage's test years and horizons, among the weights
that do not make the schools' own error more than SCHOOL_TOLERANCE worse. The
municipality's schools carry the change by one factor. Births know how many children
reach a stage's ages; a school model summed over a municipality does not.

A state's published total is bottom-up: its schools' forecasts plus the new offerings
expected. A sum of school forecasts made to be right school by school can drift as a
total (a school's forecast is a typical value, not an expected one). The state's own path
offers a second forecast of the same total: its drift, the census total at the origin times
its last yearly change, compounded over the horizon. For each stage the walk-forward picks
bottom-up or the mean of the two, whichever had the lower mean absolute % error of state
totals over its test years and horizons (the calibration table's sums of the chosen model,
with the new offerings the origin expected, against the census totals); the schools of a
state then carry the change, all by one factor, so every level still adds up.

On the real census of Alagoas (benchmarks/README.md, "Reconciliation") the mean of the two
cut the state error five years ahead from 20.2 % to 10.9 % for pre-school and from 9.8 % to
6.1 % for early elementary, and raised creche's from 10.1 % to 12.5 %: hence a choice per
stage, not a rule. One choice per stage rather than per horizon: the later horizons have
two to five test years, too few to choose by.
"""

from __future__ import annotations

import logging

import polars as pl

from censo_forecast.inep.catalog import YEAR
from censo_forecast.outputs import BIRTHS_SCALED, BOUNDS, FORECAST, HORIZON, STAGE
from censo_forecast.statepaths import at_origins, state_history

log = logging.getLogger(__name__)
BLEND = 0.5  # the state's drift's weight when the walk-forward chooses the mean
BIRTH_WEIGHTS = (0.0, 0.5, 1.0)  # candidate weights of the births-scaled municipal totals
SCHOOL_TOLERANCE = 0.01  # a weight may make the schools' walk-forward MAE at most 1 % worse


def _birth_factors(frame: pl.DataFrame, weight: float, keys: list[str]) -> pl.DataFrame:
    """Per municipality (and `keys`): the factor that takes its schools' sum to the weighted mean
    of that sum and its births-scaled sum (1 where the schools sum to nothing)."""
    sums = frame.group_by("CO_MUNICIPIO", *keys).agg(pl.col(FORECAST).sum().alias("_schools"),
                                                     pl.col(BIRTHS_SCALED).sum().alias("_births"))
    target = (1 - weight) * pl.col("_schools") + weight * pl.col("_births")
    return sums.select("CO_MUNICIPIO", *keys, pl.when(pl.col("_schools") > 0).then(target / pl.col("_schools"))
                       .otherwise(1.0).alias("_factor"))


def _with_birth_weight(calibration: pl.DataFrame, weight: float) -> pl.DataFrame:
    """The calibration rows' forecasts as the municipal blend would have made them."""
    if weight == 0.0:
        return calibration
    factors = _birth_factors(calibration, weight, [HORIZON, YEAR])
    return (calibration.join(factors, on=["CO_MUNICIPIO", HORIZON, YEAR], how="left", maintain_order="left")
            .with_columns(pl.col(FORECAST) * pl.col("_factor")).drop("_factor"))


def birth_weight(calibration: pl.DataFrame) -> tuple[float, dict[float, tuple[float, float]]]:
    """The births-scaled totals' weight for a stage, and per candidate weight its (municipal
    WAPE, school MAE), each the mean over the validated horizons (0 without births)."""
    if BIRTHS_SCALED not in calibration.columns:
        return 0.0, {}
    with_truth = calibration.with_columns((pl.col(FORECAST) + pl.col("residual")).alias("_actual"))
    scores = {}
    for weight in BIRTH_WEIGHTS:
        rows = _with_birth_weight(with_truth, weight)
        munis = rows.group_by(HORIZON, YEAR, "CO_MUNICIPIO").agg(pl.col(FORECAST, "_actual").sum())
        wape = munis.group_by(HORIZON).agg(((pl.col(FORECAST) - pl.col("_actual")).abs().sum()
                                            / pl.col("_actual").sum()).alias("e")).select(pl.col("e").mean()).item()
        mae = rows.group_by(HORIZON).agg((pl.col(FORECAST) - pl.col("_actual")).abs().mean().alias("e")).select(
            pl.col("e").mean()).item()
        scores[weight] = (float(wape), float(mae))
    allowed = [w for w in BIRTH_WEIGHTS if scores[w][1] <= scores[0.0][1] * (1 + SCHOOL_TOLERANCE)]
    return min(allowed, key=lambda w: scores[w][0]), scores


def municipal(schools: pl.DataFrame, calibration: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """School forecasts with municipal totals blended with their births-scaled totals where the
    walk-forward chose it (module docstring), and the calibration tables as the blend would
    have made them (the state step decides on those)."""
    if BIRTHS_SCALED not in schools.columns:
        return schools, calibration
    factors, adjusted = [], dict(calibration)
    for flag in schools[STAGE].unique(maintain_order=True).to_list():
        if flag not in calibration:
            continue
        weight, scores = birth_weight(calibration[flag])
        if scores:
            log.info("%s: municipal totals %s (walk-forward municipal error by weight of the births-scaled totals: %s)",
                     flag, f"blended with births, weight {weight:g}" if weight else "bottom-up",
                     ", ".join(f"{w:g}: {100 * e[0]:.1f} % (school MAE {e[1]:.2f})" for w, e in scores.items()))
        rows = schools.filter(pl.col(STAGE) == flag)
        if weight == 0.0 or rows[BIRTHS_SCALED].null_count() == rows.height:
            continue
        adjusted[flag] = _with_birth_weight(calibration[flag], weight)
        factors.append(_birth_factors(rows, weight, [HORIZON]).with_columns(pl.lit(flag).alias(STAGE)))
    if not factors:
        return schools, adjusted
    return _scaled(schools, pl.concat(factors), [STAGE, "CO_MUNICIPIO", HORIZON]), adjusted


def _scaled(schools: pl.DataFrame, factors: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Forecasts and bounds times the factor of their (keys); rows keep their order."""
    scaled = [c for c in (FORECAST, *BOUNDS) if c in schools.columns]
    factors = factors.cast({k: schools.schema[k] for k in keys})
    return (schools.join(factors.select(*keys, "_factor"), on=keys, how="left", maintain_order="left")
            .with_columns((pl.col(c) * pl.col("_factor").fill_null(1.0)).alias(c) for c in scaled).drop("_factor"))


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
    blend = (1 - BLEND) * bottom_up + BLEND * pl.col("total") * pl.col("drift").pow(h)
    row = sums.select((bottom_up / pl.col("actual") - 1).abs().mean(), (blend / pl.col("actual") - 1).abs().mean()).row(0)
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
    """School forecasts with municipal totals blended with births, then each state's total
    blended with its drift, in the stages where the walk-forward chose them (module
    docstring); rows keep their order. A stage without calibration stays bottom-up."""
    schools, calibration = municipal(schools, calibration)
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
        target = (1 - BLEND) * (pl.col("schools") + new) + BLEND * pl.col("total") * pl.col("drift").pow(pl.col(HORIZON))
        factors.append(sums.select(pl.lit(flag).alias(STAGE), "CO_UF", HORIZON,
                                   ((target - new).clip(lower_bound=0.0) / pl.col("schools")).alias("_factor")))
    if not factors:
        return schools
    return _scaled(schools, pl.concat(factors), [STAGE, "CO_UF", HORIZON])
