"""Conformal prediction intervals, calibrated per school-size bin (Mondrian).

Residuals (truth - forecast) come from the walk-forward test years, one horizon at a time
(intervals widen with the horizon because its residuals do), and are pooled across
schools within bins of last year's enrollment; a school never gets an interval
from its own two or three residuals. Bins with too few residuals fall back to the pool.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from censo_forecast.outputs import PERSISTENCE

SIZE_EDGES = (10, 25, 50, 100, 200, 400)  # bins: <10, 10-24, 25-49, ..., 400+
LEVELS = (0.80, 0.95)
MIN_PER_BIN = 30


def size_bin(last_year: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(SIZE_EDGES), np.nan_to_num(np.asarray(last_year, dtype=np.float64)), side="right")


def size_labels() -> list[str]:
    """Readable bins: "<10", "10-24", ..., "400+"."""
    edges = SIZE_EDGES
    return [f"<{edges[0]}", *(f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])), f"{edges[-1]}+"]


def cv_size_bins(predictions: pl.DataFrame) -> np.ndarray:
    """Size bins of walk-forward rows: last year's enrollment is the persistence forecast."""
    return size_bin(predictions[PERSISTENCE].to_numpy())


def calibration_table(predictions: pl.DataFrame, model: str) -> pl.DataFrame:
    """(bin, NU_ANO_CENSO, residual) from walk-forward predictions of one model."""
    return predictions.select(
        pl.Series("bin", cv_size_bins(predictions), dtype=pl.Int8),
        "NU_ANO_CENSO",
        (pl.col("y_true") - pl.col(model)).alias("residual"),
    )


def _offsets(residuals: np.ndarray, level: float) -> tuple[float, float]:
    """Split-conformal bounds on signed residuals: the k-th smallest with
    k = floor((n+1) a/2) and k = ceil((n+1)(1 - a/2)), a = 1 - level."""
    r = np.sort(residuals)
    n = len(r)
    alpha = round(1.0 - level, 9)  # 1 - 0.8 is 0.19999... in binary; the index must not slip
    k_lo = max(int(np.floor(round((n + 1) * alpha / 2, 9))), 1)
    k_hi = min(int(np.ceil(round((n + 1) * (1 - alpha / 2), 9))), n)
    return float(r[k_lo - 1]), float(r[k_hi - 1])


def offsets_by_bin(calibration: pl.DataFrame, level: float) -> dict[int, tuple[float, float]]:
    pooled = calibration["residual"].to_numpy()
    if len(pooled) == 0:
        raise ValueError("no residuals to calibrate intervals")
    fallback = _offsets(pooled, level)
    out = {}
    for b in range(len(SIZE_EDGES) + 1):
        r = calibration.filter(pl.col("bin") == b)["residual"].to_numpy()
        out[b] = _offsets(r, level) if len(r) >= MIN_PER_BIN else fallback
    return out


def bounds(pred: np.ndarray, last_year: np.ndarray, calibration: pl.DataFrame) -> dict[str, np.ndarray]:
    """limite_inferior_XX / limite_superior_XX per level, never below zero."""
    bins = size_bin(last_year)
    out = {}
    for level in LEVELS:
        table = offsets_by_bin(calibration, level)
        lo, hi = (np.array([table[b][side] for b in range(len(SIZE_EDGES) + 1)])[bins] for side in (0, 1))
        pct = int(round(level * 100))
        out[f"limite_inferior_{pct}"] = np.maximum(pred + lo, 0.0)
        out[f"limite_superior_{pct}"] = np.maximum(pred + hi, 0.0)
    return out


def coverage_by_year(predictions: pl.DataFrame, model: str, horizon: int = 1) -> pl.DataFrame:
    """Empirical coverage per test year of one horizon's rows, each year Y calibrated only on
    the residuals known at its origin: target years <= Y - horizon."""
    calibration = calibration_table(predictions, model)
    rows = []
    years = sorted(predictions["NU_ANO_CENSO"].unique().to_list())
    for year in years:
        earlier = calibration.filter(pl.col("NU_ANO_CENSO") <= year - horizon)
        if earlier.height == 0:
            continue
        test = predictions.filter(pl.col("NU_ANO_CENSO") == year)
        b = bounds(test[model].to_numpy(), test[PERSISTENCE].to_numpy(), earlier)
        y = test["y_true"].to_numpy()
        row = {"modelo": model, "NU_ANO_CENSO": year, "n": len(y)}
        for level in LEVELS:
            pct = int(round(level * 100))
            row[f"Cobertura_{pct}"] = float(np.mean((y >= b[f"limite_inferior_{pct}"]) & (y <= b[f"limite_superior_{pct}"])))
        rows.append(row)
    return pl.DataFrame(rows)


def sample_residuals(calibration: pl.DataFrame, bins: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """draws x n residuals: each draw picks one calibration year (keeping that year's common
    shock) and, per school, a residual of its size bin in that year (pooled bin if too few)."""
    years = sorted(calibration["NU_ANO_CENSO"].unique().to_list())
    pools = {}
    for year in years:
        in_year = calibration.filter(pl.col("NU_ANO_CENSO") == year)
        for b in np.unique(bins):
            r = in_year.filter(pl.col("bin") == int(b))["residual"].to_numpy()
            pools[year, int(b)] = r if len(r) >= MIN_PER_BIN // 3 else in_year["residual"].to_numpy()
    out = np.empty((draws, len(bins)))
    chosen = rng.choice(years, size=draws)
    for d, year in enumerate(chosen):
        for b in np.unique(bins):
            pool = pools[year, int(b)]
            where = bins == b
            out[d, where] = pool[rng.integers(0, len(pool), size=int(where.sum()))]
    return out
