"""Next-year forecast files: per school with intervals, and summed to municipality, state
and country with intervals from resampled residuals (never by adding bounds), plus the
enrollment expected in offerings that will open (new schools or stages).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from censo_forecast import atomic, intervals
from censo_forecast.inep import catalog
from censo_forecast.panel import SCHOOL, YEAR

log = logging.getLogger(__name__)
NEW_OFFERINGS_WINDOW = 3
DRAWS = 400
SCHOOL_COLUMNS = [
    "CO_ENTIDADE", "NO_ENTIDADE", "CO_MUNICIPIO", "CO_UF", "etapa", "modelo", "matriculas_ultimo_ano", "previsao",
    "limite_inferior_80", "limite_superior_80", "limite_inferior_95", "limite_superior_95",
]


def new_offerings(panel: pl.DataFrame, flag: str, window: int = NEW_OFFERINGS_WINDOW) -> pl.DataFrame:
    """Per municipality and year: enrollment in schools that offer the stage this year but
    did not the year before (new schools included). The last `window` years."""
    stage = catalog.stage(flag)
    offers = panel.filter(pl.col("active") & (pl.col(stage.flag) == 1)).select(SCHOOL, YEAR, "CO_MUNICIPIO", "CO_UF", stage.enrollment)
    before = offers.select(SCHOOL, (pl.col(YEAR) + 1).alias(YEAR), pl.lit(True).alias("offered_before"))
    last = int(panel[YEAR].max())
    first = int(panel[YEAR].min())
    years = [y for y in range(last - window + 1, last + 1) if y > first]
    fresh = (
        offers.filter(pl.col(YEAR).is_in(years))
        .join(before, on=[SCHOOL, YEAR], how="left")
        .filter(pl.col("offered_before").is_null())
        .group_by("CO_MUNICIPIO", "CO_UF", YEAR)
        .agg(pl.col(stage.enrollment).fill_null(0).sum().cast(pl.Float64).alias("new_enrollment"))
    )
    munis = panel.filter(pl.col(YEAR) == last).select("CO_MUNICIPIO", "CO_UF").unique()
    grid = munis.join(pl.DataFrame({YEAR: years}, schema={YEAR: panel.schema[YEAR]}), how="cross")
    return grid.join(fresh, on=["CO_MUNICIPIO", "CO_UF", YEAR], how="left").with_columns(pl.col("new_enrollment").fill_null(0.0))


def _area_table(keys: np.ndarray, point: np.ndarray, last: np.ndarray, new_expected: np.ndarray,
                draws: np.ndarray, key_name: str) -> pl.DataFrame:
    """Sum per area; bounds are quantiles of the summed draws."""
    out = {key_name: keys, "matriculas_ultimo_ano": last, "previsao_escolas": point, "previsao_novas_ofertas": new_expected,
           "previsao": point + new_expected}
    for level in intervals.LEVELS:
        pct = int(round(level * 100))
        a = (1 - level) / 2
        out[f"limite_inferior_{pct}"] = np.quantile(draws, a, axis=0)
        out[f"limite_superior_{pct}"] = np.quantile(draws, 1 - a, axis=0)
    return pl.DataFrame(out)


def aggregate(schools: pl.DataFrame, calibration: pl.DataFrame, offerings: pl.DataFrame, flag: str,
              draws: int = DRAWS, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Municipal, state and national totals for one stage with resampled intervals."""
    rng = np.random.default_rng(seed)
    pred = schools["previsao"].to_numpy()
    last = schools["matriculas_ultimo_ano"].to_numpy()
    sampled = np.maximum(pred + intervals.sample_residuals(calibration, intervals.size_bin(last), draws, rng), 0.0)
    # new offerings: one of the recent years per draw, shared by all municipalities (a common shock)
    off_years = sorted(offerings[YEAR].unique().to_list()) or [None]
    munis = sorted(set(schools["CO_MUNICIPIO"].to_list()) | set(offerings["CO_MUNICIPIO"].to_list()))
    muni_index = {m: i for i, m in enumerate(munis)}
    muni_uf = dict(zip(offerings["CO_MUNICIPIO"].to_list(), offerings["CO_UF"].to_list()))
    muni_uf.update(zip(schools["CO_MUNICIPIO"].to_list(), schools["CO_UF"].to_list()))
    per_year = np.zeros((len(off_years), len(munis)))
    for j, year in enumerate(off_years):
        part = offerings.filter(pl.col(YEAR) == year)
        for m, v in zip(part["CO_MUNICIPIO"].to_list(), part["new_enrollment"].to_list()):
            per_year[j, muni_index[m]] = v
    new_expected = per_year.mean(axis=0)
    new_draws = per_year[rng.integers(0, len(off_years), size=draws)]
    school_muni = np.array([muni_index[m] for m in schools["CO_MUNICIPIO"].to_list()], dtype=np.int64)
    n_muni = len(munis)

    def by_muni(values: np.ndarray) -> np.ndarray:
        return np.bincount(school_muni, weights=values, minlength=n_muni)

    muni_draws = np.stack([by_muni(sampled[d]) for d in range(draws)]) + new_draws
    muni = _area_table(np.array(munis), by_muni(pred), by_muni(last), new_expected, muni_draws, "CO_MUNICIPIO")
    muni = muni.with_columns(pl.col("CO_MUNICIPIO").replace_strict(muni_uf).alias("CO_UF"))
    ufs = sorted(set(muni_uf[m] for m in munis))
    uf_of = np.array([ufs.index(muni_uf[m]) for m in munis])
    uf_sum = lambda v: np.bincount(uf_of, weights=v, minlength=len(ufs))  # noqa: E731
    uf_draws = np.stack([uf_sum(muni_draws[d]) for d in range(draws)])
    uf = _area_table(np.array(ufs), uf_sum(by_muni(pred)), uf_sum(by_muni(last)), uf_sum(new_expected), uf_draws, "CO_UF")
    abbr = {code: a for code, a, _, _ in catalog.UFS}
    uf = uf.with_columns(pl.col("CO_UF").replace_strict(abbr, default=None, return_dtype=pl.String).alias("SG_UF"))
    country = _area_table(np.array(["BR"]), np.array([pred.sum()]), np.array([last.sum()]), np.array([new_expected.sum()]),
                          muni_draws.sum(axis=1, keepdims=True), "pais")
    tag = lambda f: f.with_columns(pl.lit(flag).alias("etapa"))  # noqa: E731
    return {"municipios": tag(muni), "ufs": tag(uf), "brasil": tag(country)}


def write_forecasts(out: Path, year: int, schools: pl.DataFrame, areas: dict[str, pl.DataFrame]) -> list[Path]:
    """previsoes_{year}.parquet/.csv and the _municipios, _ufs, _brasil CSVs, atomically."""
    written = []
    base = Path(out) / f"previsoes_{year}"
    schools = schools.select(SCHOOL_COLUMNS).sort("etapa", SCHOOL)
    atomic.write_parquet(base.with_suffix(".parquet"), schools)
    atomic.write_csv(base.with_suffix(".csv"), schools)
    written += [base.with_suffix(".parquet"), base.with_suffix(".csv")]
    for name, frame in areas.items():
        path = Path(out) / f"previsoes_{year}_{name}.csv"
        first = [c for c in ("etapa", "CO_UF", "SG_UF", "CO_MUNICIPIO", "pais") if c in frame.columns]
        atomic.write_csv(path, frame.select(*first, *[c for c in frame.columns if c not in first]))
        written.append(path)
    return written
