"""Forecasts h = 1 .. H years ahead: origin rows stacked by horizon, and the pairs a fit may see.

An origin row (school, o) holds features read from census years <= o and, per horizon h,
the truth in o + h and the Coorte forecast h years ahead (`features`). `stack` turns it into
one row per (origin, horizon) with the feature `horizon` = h. One model per stage learns
every horizon, and the first `separate_horizons` years ahead (default: one year) get a
model of their own besides (`models.HorizonSplit`; benchmarks/README.md, "horizons" and
"the hybrid", say why).

Leakage rule: a fit for the origin O (the census year its forecasts are made from) sees
only pairs whose target year o + h <= O, so a forecast made at origin O never learns from
a census year after O.

Sampling: the pairs of a fit's window are thinned to `max_training_rows` by a hash of
(school, origin, horizon), not a random generator: any engine, holding the rows in any
partitions, keeps exactly the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from censo_forecast.features import FEATURES, HORIZON_FEATURE, ORIGIN_YEAR, PER_HORIZON, TARGET_YEAR, truth_column
from censo_forecast.inep.catalog import SCHOOL
from censo_forecast.outputs import ACTUAL

KEYS = (SCHOOL, "origin_year", "target_year", "CO_MUNICIPIO", "CO_UF")
_MODULUS = 2**31 - 1  # a Lehmer generator's prime: the hash below stays within int64


def up_to(horizons: int) -> list[int]:
    """The years ahead 1 .. `horizons` (a count)."""
    return list(range(1, horizons + 1))


def stack(frame: pl.DataFrame, ahead: Sequence[int], *, truth: bool = True) -> pl.DataFrame:
    """One row per (origin row, years ahead in `ahead`): KEYS, FEATURES (with `horizon` and the
    Coorte forecast and the birth ratio at that horizon) and, with `truth`, y_true (pairs whose truth is unknown
    are left out)."""
    parts = []
    for h in ahead:
        columns: list[pl.Expr | str] = [
            *KEYS[:2], (pl.col(ORIGIN_YEAR) + h).alias(TARGET_YEAR), *KEYS[3:],
            *(pl.col(PER_HORIZON[f](h)).alias(f) if f in PER_HORIZON else
              pl.lit(h, dtype=pl.Float32).alias(f) if f == HORIZON_FEATURE else pl.col(f) for f in FEATURES),
        ]
        if truth:
            part = frame.select(*columns, pl.col(truth_column(h)).alias(ACTUAL)).filter(pl.col(ACTUAL).is_not_null())
        else:
            part = frame.select(columns)
        parts.append(part)
    return pl.concat(parts)


def matrix(frame: pl.DataFrame) -> np.ndarray:
    """The model inputs of stacked rows, in FEATURES order."""
    return frame.select(FEATURES).to_numpy().astype(np.float32, copy=False)


def window(origin: int, window_years: int, horizon: int) -> pl.Expr:
    """Origin rows whose pair at `horizon` has a target year in the window of a fit for
    `origin`: <= origin, and among the last `window_years` target years when window_years > 0."""
    target = pl.col(ORIGIN_YEAR) + horizon
    rows = target <= origin
    return rows & (target > origin - window_years) if window_years > 0 else rows


def pairs_in_window(frame: pl.DataFrame, origin: int, window_years: int, ahead: Sequence[int]) -> int:
    """How many (origin, horizon) pairs with known truth the window holds at the years ahead in
    `ahead` (an engine adds up its partitions' counts to get the sampling fraction)."""
    return sum(frame.filter(window(origin, window_years, h) & pl.col(truth_column(h)).is_not_null()).height for h in ahead)


def sampling_fraction(pairs: int, max_rows: int) -> float:
    return 1.0 if max_rows <= 0 or pairs <= max_rows else max_rows / pairs


def _uniform(horizon: int) -> pl.Expr:
    """A number in [0, 1) per (school, origin, horizon), the same on every machine."""
    x = (pl.col(SCHOOL).cast(pl.Int64) * 1_000_003 + pl.col(ORIGIN_YEAR).cast(pl.Int64) * 101 + horizon) % _MODULUS
    for _ in range(3):  # Park-Miller steps mix neighbouring schools apart
        x = (x * 48_271) % _MODULUS
    return x.cast(pl.Float64) / _MODULUS


def training_pairs(frame: pl.DataFrame, origin: int, window_years: int, ahead: Sequence[int], fraction: float) -> pl.DataFrame:
    """The stacked pairs a fit for `origin` trains on, at the years ahead in `ahead`: target
    year <= origin, in the window, each kept when its hash falls below `fraction` (1: all)."""
    parts = []
    for h in ahead:
        keep = window(origin, window_years, h)
        if fraction < 1.0:
            keep = keep & (_uniform(h) < fraction)
        parts.append(stack(frame.filter(keep), [h]))
    return pl.concat(parts)
