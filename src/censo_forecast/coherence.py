"""Forecasts that add up across stages: a stage INEP counts as the sum of others (all
elementary = early + final elementary, `catalog.STAGE_SUMS`) is forecast as that sum, in the
school files and in every area file, so a planner never sees 417 thousand beside 442.

Bottom-up: early and final elementary are the planners' units (their own schools, teachers
and classes), each with its own validated model; the sum's point forecast is theirs.
Its intervals keep the widths its own calibration gave (the residuals of all-elementary
forecasts, at each level), re-centred on the sum: bounds are never added, which would
overstate the range.

When its parts are fitted in the same run, the sum has no model of its own (`SumOfParts`):
its walk-forward is its parts' summed school by school (`walk_forward`), which is what it
publishes, and calibrates its intervals. Validating, explaining and refitting it on its own
cost 13 % of the national run (262 of 1,997 s; summed, the run took 1,703 s) for forecasts
that were then replaced by the sum, and they were no better: one to five years ahead its own
Voting's MAE per school was 10.73 ... 36.87, the sums of its parts' 10.66 ... 36.91
(benchmarks/README.md, "pipeline.py", runs of 2026-12-06 and 2026-12-07).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import polars as pl

from censo_forecast import models
from censo_forecast.inep.catalog import SCHOOL, STAGE_SUMS, YEAR
from censo_forecast.outputs import (
    ACTUAL,
    BIRTHS_ADJUSTMENT,
    BOUNDS,
    COUNTRY_KEY,
    FORECAST,
    HORIZON,
    MODEL,
    NEW_OFFERINGS_FORECAST,
    ORIGIN,
    SCHOOLS_FORECAST,
    STAGE,
    SUM_OF_PARTS,
)
from censo_forecast.validation import StageCV, fold_metrics

log = logging.getLogger(__name__)
# what an area total adds up from (the last census adds up by INEP's identity already)
ADDITIVE = (SCHOOLS_FORECAST, NEW_OFFERINGS_FORECAST, BIRTHS_ADJUSTMENT, FORECAST)


def reconcilable(stages, *, say: bool = False) -> dict[str, tuple[str, ...]]:
    """The sums among `stages` whose parts are all there too; with `say`, one log line for each
    sum left as forecast (the school pass says it; the area passes that follow do not repeat it)."""
    present = set(stages)
    found = {total: parts for total, parts in STAGE_SUMS.items() if total in present and set(parts) <= present}
    for total, parts in STAGE_SUMS.items():
        if say and total in present and total not in found:
            log.warning("%s is forecast on its own: %s are not all among the stages, so it cannot be their sum", total, parts)
    return found


def _as_sum(frame: pl.DataFrame, keys: list[str], total: str, parts: tuple[str, ...], additive: list[str]) -> pl.DataFrame:
    """`total`'s rows with its additive columns replaced by the sums of its parts' rows (same
    keys; a key a part lacks counts 0) and its bounds moved by the same change as its forecast
    (kept at 0 or more); the other stages' rows, and every row's place, as they were."""
    rows = frame.with_columns(pl.int_range(pl.len()).alias("_row"))
    sums = (rows.filter(pl.col(STAGE).is_in(list(parts))).group_by(keys)
            .agg(pl.col(c).fill_null(0).sum().alias(f"_sum_{c}") for c in additive))
    shift = pl.col(f"_sum_{FORECAST}").fill_null(0) - pl.col(FORECAST)
    own = rows.filter(pl.col(STAGE) == total).join(sums, on=keys, how="left").with_columns(
        *((pl.col(c) + shift).clip(lower_bound=0).alias(c) for c in BOUNDS if c in frame.columns),
        *(pl.col(f"_sum_{c}").fill_null(0).cast(frame.schema[c]).alias(c) for c in additive),
        *([pl.lit(SUM_OF_PARTS).alias(MODEL)] if MODEL in frame.columns else []),
    )
    return pl.concat([rows.filter(pl.col(STAGE) != total), own.select(rows.columns)]).sort("_row").drop("_row")


def schools(frame: pl.DataFrame) -> pl.DataFrame:
    """School forecasts (`EnrollmentForecaster.predict`) with each reconcilable sum made of its parts."""
    for total, parts in reconcilable(frame[STAGE].unique().to_list(), say=True).items():
        frame = _as_sum(frame, [SCHOOL, YEAR], total, parts, [FORECAST])
    return frame


def areas(frame: pl.DataFrame) -> pl.DataFrame:
    """One area level's totals (municipalities, states or the country) with each reconcilable
    sum made of its parts: the forecast and its components."""
    key = next(k for k in ("CO_MUNICIPIO", "CO_UF", COUNTRY_KEY) if k in frame.columns)
    keys = [key, HORIZON] if HORIZON in frame.columns else [key]
    for total, parts in reconcilable(frame[STAGE].unique().to_list()).items():
        frame = _as_sum(frame, keys, total, parts, [c for c in ADDITIVE if c in frame.columns])
    return frame


@dataclass(frozen=True)
class SumOfParts:
    """The "model" of a stage published as the sum of its parts: nothing fitted, their
    forecasts added up (`forecast.sum_of_parts`)."""

    parts: tuple[str, ...]


def walk_forward(flag: str, parts: list[tuple[StageCV, dict[int, str]]]) -> StageCV:
    """The walk-forward of a sum, from its parts' walk-forwards and their chosen model per
    horizon: per school, origin and horizon, every model both parts have, the truth, and
    `SUM_OF_PARTS` (each part's chosen model, as published), summed; a school without one
    part at the origin counts 0 for it (its forecast is not published either)."""
    started = time.perf_counter()
    names = [m for m in models.MODEL_NAMES if all(m in cv.predictions.columns for cv, _ in parts)]
    keys = [SCHOOL, YEAR, ORIGIN, HORIZON]
    frames = []
    for cv, chosen in parts:
        published = pl.coalesce(pl.when(pl.col(HORIZON) == h).then(pl.col(name)) for h, name in chosen.items())
        frames.append(cv.predictions.select(*keys, "CO_MUNICIPIO", "CO_UF", ACTUAL, *names, published.alias(SUM_OF_PARTS)))
    summed = (pl.concat(frames).group_by(keys)
              .agg(pl.col("CO_MUNICIPIO", "CO_UF").first(), pl.col(ACTUAL, *names, SUM_OF_PARTS).sum())
              .sort(HORIZON, ORIGIN, SCHOOL))
    predictions = summed.select(pl.lit(flag).alias(STAGE), SCHOOL, YEAR, ORIGIN, HORIZON, "CO_MUNICIPIO", "CO_UF",
                                ACTUAL, *names, SUM_OF_PARTS)
    folds = pl.DataFrame(fold_metrics(predictions, flag, [*names, SUM_OF_PARTS])).sort(HORIZON, YEAR, maintain_order=True)
    log.info("%s: its walk-forward is the sum of %s's (no model of its own)", flag, " + ".join(cv.flag for cv, _ in parts))
    return StageCV(flag, predictions, folds, time.perf_counter() - started)
