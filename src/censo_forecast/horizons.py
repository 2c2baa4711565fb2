"""Forecasts h = 1 .. H years ahead: origin rows stacked by horizon, and the pairs a fit may see.

An origin row (school, o) holds features read from census years <= o and, per horizon h,
the truth in o + h and the Coorte forecast h years ahead (`features`). `stack` turns it into
one row per (origin, horizon) with the feature `horizon` = h: one model per stage learns
every horizon (benchmarks/README.md, "horizons", says why not one model per horizon).

Leakage rule: a fit for the origin `cut` sees only pairs whose target year o + h <= cut,
so a forecast made at origin o never learns from a census year after o.

Sampling: the pairs of a fit's window are thinned to `max_training_rows` by a hash of
(school, origin, horizon), not a random generator: any engine, holding the rows in any
partitions, keeps exactly the same pairs.
"""

from __future__ import annotations

import polars as pl

from censo_forecast import cohort
from censo_forecast.features import COHORT_FEATURE, FEATURES, HORIZON, truth_column
from censo_forecast.panel import SCHOOL

KEYS = (SCHOOL, "origin_year", "target_year", "CO_MUNICIPIO", "CO_UF")
_MODULUS = 2**31 - 1  # a Lehmer generator's prime: the hash below stays within int64


def stack(frame: pl.DataFrame, horizons: int | list[int], *, truth: bool = True) -> pl.DataFrame:
    """One row per (origin row, horizon): KEYS, FEATURES (with `horizon` and the Coorte forecast
    at that horizon) and, with `truth`, y_true (pairs whose truth is unknown are left out)."""
    wanted = range(1, horizons + 1) if isinstance(horizons, int) else horizons
    parts = []
    for h in wanted:
        columns = [
            *KEYS[:2], (pl.col("origin_year") + h).alias("target_year"), *KEYS[3:],
            *(pl.col(cohort.forecast_column(h)).alias(f) if f == COHORT_FEATURE else
              pl.lit(h, dtype=pl.Float32).alias(f) if f == HORIZON else pl.col(f) for f in FEATURES),
        ]
        if truth:
            part = frame.select(*columns, pl.col(truth_column(h)).alias("y_true")).filter(pl.col("y_true").is_not_null())
        else:
            part = frame.select(columns)
        parts.append(part)
    return pl.concat(parts)


def window(cut: int, window_years: int, horizon: int) -> pl.Expr:
    """Origin rows whose pair at `horizon` has a target year in the fit's window: <= cut, and
    among the last `window_years` target years when window_years > 0."""
    target = pl.col("origin_year") + horizon
    rows = target <= cut
    return rows & (target > cut - window_years) if window_years > 0 else rows


def pairs_in_window(frame: pl.DataFrame, cut: int, window_years: int, horizons: int) -> int:
    """How many (origin, horizon) pairs with known truth the window holds (an engine adds up
    its partitions' counts to get the sampling fraction)."""
    return sum(frame.filter(window(cut, window_years, h) & pl.col(truth_column(h)).is_not_null()).height
               for h in range(1, horizons + 1))


def sampling_fraction(pairs: int, max_rows: int) -> float:
    return 1.0 if max_rows <= 0 or pairs <= max_rows else max_rows / pairs


def _uniform(horizon: int) -> pl.Expr:
    """A number in [0, 1) per (school, origin, horizon), the same on every machine."""
    x = (pl.col(SCHOOL).cast(pl.Int64) * 1_000_003 + pl.col("origin_year").cast(pl.Int64) * 101 + horizon) % _MODULUS
    for _ in range(3):  # Park-Miller steps mix neighbouring schools apart
        x = (x * 48_271) % _MODULUS
    return x.cast(pl.Float64) / _MODULUS


def training_pairs(frame: pl.DataFrame, cut: int, window_years: int, horizons: int, fraction: float) -> pl.DataFrame:
    """The stacked pairs a fit for origin `cut` trains on: target year <= cut, in the window,
    each kept when its hash falls below `fraction` (1: all)."""
    parts = []
    for h in range(1, horizons + 1):
        keep = window(cut, window_years, h)
        if fraction < 1.0:
            keep = keep & (_uniform(h) < fraction)
        parts.append(stack(frame.filter(keep), [h]))
    return pl.concat(parts)
