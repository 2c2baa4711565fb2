"""Conformal prediction intervals, calibrated per size bin (Mondrian), for schools and areas.

Residuals (truth - forecast) come from the walk-forward test years, one horizon at a time
(intervals widen with the horizon because its residuals do), and are pooled across
schools within bins of last year's enrollment; a school never gets an interval
from its own two or three residuals. Bins with too few residuals fall back to the pool.

An area's total is calibrated on the walk-forward errors of totals at its own level, as the
area files publish them: in each test year, each municipality's (state's, the country's)
summed forecast plus the new offerings its origin expected, blended with births where the
stage is, against its census total. Schools of one municipality err together (a network
reorganised, a year unlike its past), which school residuals drawn one by one average away:
on the real census of Alagoas their 80 % ranges held 54-77 % of creche's municipal totals
one to five years ahead, and 82-94 % of elementary ones. The errors are those of the whole
published total, not of the schools' sum with the new offerings drawn beside it: on the same
census that held 90-98 % of early elementary's and pre-school's municipal totals at 80 %
(the births blend and the openings were outside the errors calibrating them), and this
holds 81-87 % (benchmarks/README.md, "intervals of totals as published").

Recent years only: schools and municipalities are calibrated on the last RECENT_TEST_YEARS
test years of their horizon, not on every one since the census began. The earliest test
years of the real census of Alagoas were unlike the later ones (creche expanding by policy,
final elementary falling 5-6 % a year), and their errors made the ranges wide where later
errors were small and off-centre where they were not: creche's schools were over-covered
(83-87 % at 80 %) and final elementary's municipal ranges lay wholly below the forecast
(-25 to -38 % .. 0 three to five years ahead), holding 41-57 % of municipalities at 80 %.
A municipality's errors carry their test years' common part, the error of the whole state in
that year; with one to three test years that part is a year's bias as much as the method's,
so it counts n / (n + BIAS_PRIOR_YEARS) of itself (n: test years): the errors' median is
shrunk toward 0 by that much (`municipal_errors`). States and the country keep every test
year, and their errors count either sign (`symmetric`): with one error per test year, a
handful of past errors says how far the next may fall, not on which side, and their signed
quantiles gave ranges whose 80 % and 95 % bounds were both the few errors' extremes, and
they held the state's total at 0.55 of the back-test's origin-horizons at either level (0.85
symmetric, the ranges twice as wide; benchmarks/README.md, "2026-12-07 (fourth session)").
"""

from __future__ import annotations

import numpy as np
import polars as pl

from censo_forecast.inep.catalog import YEAR
from censo_forecast.outputs import (
    ACTUAL,
    FORECAST,
    INTERVAL_LEVELS,
    MODEL,
    PERSISTENCE,
    ROWS,
    bound,
    coverage_column,
)

SIZE_EDGES = (10, 25, 50, 100, 200, 400)  # bins: <10, 10-24, 25-49, ..., 400+
AREA_SIZE_EDGES = (250, 1_000, 4_000, 16_000)  # an area's forecast students: <250, ..., 16,000+
AREA_KEYS = ("CO_MUNICIPIO", "CO_UF")  # what a calibration row keeps of its school, to sum it into areas
LEVELS = tuple(level / 100 for level in INTERVAL_LEVELS)  # 0.8, 0.95
MIN_PER_BIN = 30
RECENT_TEST_YEARS = 3  # schools and municipalities: the last three test years of a horizon calibrate it
BIAS_PRIOR_YEARS = 2  # a municipal errors' median seen in n test years counts n / (n + 2) of itself


def size_bin(last_year: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(SIZE_EDGES), np.nan_to_num(np.asarray(last_year, dtype=np.float64)), side="right")


def size_labels() -> list[str]:
    """Readable bins: "<10", "10-24", ..., "400+"."""
    edges = SIZE_EDGES
    return [f"<{edges[0]}", *(f"{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)), f"{edges[-1]}+"]


def cv_size_bins(predictions: pl.DataFrame) -> np.ndarray:
    """Size bins of walk-forward rows: last year's enrollment is the persistence forecast."""
    return size_bin(predictions[PERSISTENCE].to_numpy())


def calibration_table(predictions: pl.DataFrame, model: str) -> pl.DataFrame:
    """(bin, NU_ANO_CENSO, residual, CO_MUNICIPIO, CO_UF, previsao) from walk-forward
    predictions of one model: school residuals, and what sums them into areas."""
    return predictions.select(
        pl.Series("bin", cv_size_bins(predictions), dtype=pl.Int8),
        YEAR,
        (pl.col(ACTUAL) - pl.col(model)).alias("residual"),
        *AREA_KEYS,
        pl.col(model).cast(pl.Float64).alias(FORECAST),
    )


def _ranks(n: int, level: float) -> tuple[int, int]:
    """k = floor((n+1) a/2) and k = ceil((n+1)(1 - a/2)), a = 1 - level, within 1..n."""
    alpha = round(1.0 - level, 9)  # 1 - 0.8 is 0.19999... in binary; the index must not slip
    return max(int(np.floor(round((n + 1) * alpha / 2, 9))), 1), min(int(np.ceil(round((n + 1) * (1 - alpha / 2), 9))), n)


def _level_offsets(residuals: np.ndarray) -> dict[float, tuple[float, float]]:
    """Split-conformal bounds on signed residuals for every level: the k-th smallest residuals
    of `_ranks`, found by one partial sort (a national bin holds millions of residuals)."""
    n = len(residuals)
    ranks = {level: _ranks(n, level) for level in LEVELS}
    kth = sorted({k - 1 for pair in ranks.values() for k in pair})
    r = np.partition(np.asarray(residuals, dtype=np.float64), kth)
    return {level: (float(r[lo - 1]), float(r[hi - 1])) for level, (lo, hi) in ranks.items()}


def _offset_arrays(residuals: np.ndarray, bins: np.ndarray) -> dict[float, np.ndarray]:
    """Per level, (bins x 2) lower and upper offsets: each size bin's own residuals when it has
    MIN_PER_BIN of them, else the pooled ones."""
    if len(residuals) == 0:
        raise ValueError("no residuals to calibrate intervals")
    pooled = _level_offsets(residuals)
    out = {level: np.empty((len(SIZE_EDGES) + 1, 2)) for level in LEVELS}
    for b in range(len(SIZE_EDGES) + 1):
        in_bin = residuals[bins == b]
        found = _level_offsets(in_bin) if len(in_bin) >= MIN_PER_BIN else pooled
        for level in LEVELS:
            out[level][b] = found[level]
    return out


def _bounds(pred: np.ndarray, bins: np.ndarray, offsets: dict[float, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for level, table in offsets.items():
        pct = int(round(level * 100))
        out[bound("inferior", pct)] = np.maximum(pred + table[bins, 0], 0.0)
        out[bound("superior", pct)] = np.maximum(pred + table[bins, 1], 0.0)
    return out


def recent(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of `frame`'s last RECENT_TEST_YEARS test years (NU_ANO_CENSO)."""
    return frame.filter(pl.col(YEAR) > pl.col(YEAR).max() - RECENT_TEST_YEARS)


def bounds(pred: np.ndarray, last_year: np.ndarray, calibration: pl.DataFrame) -> dict[str, np.ndarray]:
    """The bounds (`outputs.bound`) of every level, never below zero, from the residuals of
    the calibration's `recent` test years."""
    calibration = recent(calibration)
    offsets = _offset_arrays(calibration["residual"].to_numpy(), calibration["bin"].to_numpy())
    return _bounds(np.asarray(pred, dtype=np.float64), size_bin(last_year), offsets)


def coverage_by_year(predictions: pl.DataFrame, model: str, horizon: int = 1) -> pl.DataFrame:
    """Empirical coverage per test year of one horizon's rows, each year Y calibrated as the
    published intervals are, on the residuals known at its origin (target years <= Y - horizon)
    of its `recent` test years."""
    years = predictions[YEAR].to_numpy()
    pred = predictions[model].to_numpy().astype(np.float64)
    y = predictions[ACTUAL].to_numpy().astype(np.float64)
    bins, residuals = cv_size_bins(predictions), y - pred
    rows = []
    for year in sorted(set(years.tolist())):
        known = years <= year - horizon
        if not known.any():
            continue
        known &= years > years[known].max() - RECENT_TEST_YEARS
        test = years == year
        b = _bounds(pred[test], bins[test], _offset_arrays(residuals[known], bins[known]))
        row = {MODEL: model, YEAR: year, ROWS: int(test.sum())}
        for pct in INTERVAL_LEVELS:
            inside = (y[test] >= b[bound("inferior", pct)]) & (y[test] <= b[bound("superior", pct)])
            row[coverage_column(pct)] = float(np.mean(inside))
        rows.append(row)
    return pl.DataFrame(rows)


def area_errors(totals: pl.DataFrame, key: str | None) -> pl.DataFrame:
    """(NU_ANO_CENSO, bin, error) of the walk-forward totals as published per area (`key`:
    CO_MUNICIPIO or CO_UF; None: the country) and test year, from the municipal ones
    (`municipal.walk_forward_totals`): error = census total / forecast - 1, bins of the
    forecast total (AREA_SIZE_EDGES); areas forecast at zero are left out."""
    keys = [YEAR, *([key] if key else [])]
    sums = (totals.group_by(keys).agg(pl.col(FORECAST).sum().alias("_forecast"), pl.col(ACTUAL).sum().alias("_truth"))
            .filter(pl.col("_forecast") > 0).sort(keys))  # sorted: the draws repeat run after run
    return sums.select(YEAR, pl.Series("bin", area_size_bin(sums["_forecast"].to_numpy()), dtype=pl.Int8),
                       (pl.col("_truth") / pl.col("_forecast") - 1).alias("error"))


def municipal_errors(errors: pl.DataFrame) -> pl.DataFrame:
    """`area_errors` of municipalities as their ranges draw them: the `recent` test years', their
    median (the common part of those years' errors) shrunk toward 0 to n / (n + BIAS_PRIOR_YEARS)
    of itself, n the test years (module docstring)."""
    errors = recent(errors)
    if errors.height == 0:
        return errors
    years = errors[YEAR].n_unique()
    bias = float(errors["error"].median())  # type: ignore[arg-type]
    return errors.with_columns(pl.col("error") - BIAS_PRIOR_YEARS / (years + BIAS_PRIOR_YEARS) * bias)


def symmetric(errors: pl.DataFrame) -> pl.DataFrame:
    """`area_errors` of states or the country as their ranges draw them: each error with either
    sign, so the range is the absolute errors' quantile on both sides (module docstring)."""
    return pl.concat([errors, errors.with_columns(-pl.col("error"))])


def area_size_bin(forecast: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(AREA_SIZE_EDGES), np.asarray(forecast, dtype=np.float64), side="right")


def sample_area_errors(errors: pl.DataFrame, forecast: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """draws x areas relative errors: each area's drawn from the walk-forward errors of areas
    of its size (`area_errors`), or from every area's when its bin has fewer than MIN_PER_BIN."""
    pooled = errors["error"].to_numpy()
    bins_of = errors["bin"].to_numpy()
    bins = area_size_bin(forecast)
    out = np.empty((draws, len(bins)))
    for b in np.unique(bins):
        pool = pooled[bins_of == b]
        pool = pool if len(pool) >= MIN_PER_BIN else pooled
        areas = np.flatnonzero(bins == b)
        out[:, areas] = pool[rng.integers(0, len(pool), size=(draws, len(areas)))]
    return out
