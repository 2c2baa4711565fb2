"""Births and population for the synthetic census's municipalities, in the documented format.

The synthetic census gives each municipality a demographic factor that scales its schools'
intake every year (`inep.synthetic`, `muni_factor`: a trend of its own plus noise). Its
births follow the same factor: births(m, y) = B_m × factor(m, y) × noise, with B_m the
municipality's share of Brazil's births scaled to the simulated schools; before the first
census year the factor is carried back along the municipality's trend. The population of
age a in year y is the births of y - a, less a small mortality. So births tell the demo's
models what the census will show, as real births do, and `make demo` shows them working.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from censo_forecast import atomic

NATIONAL_BIRTHS = 2.9e6  # live births in Brazil a year, about (SINASC 2015-2019)
FULL_SCALE_SCHOOLS = 180_000
FIRST_BIRTH_YEAR = 1996  # as SINASC's files
SURVIVAL_PER_YEAR = 0.998
MAX_AGE = 17
FOLDER = "demografia"
BIRTHS_FILE, POPULATION_FILE = "nascidos_vivos.csv", "populacao_idade.csv"


def write(folder: Path, codes: np.ndarray, weights: np.ndarray, growth: np.ndarray, factors: dict[int, np.ndarray],
          schools: int, seed: int) -> list[Path]:
    """Write `nascidos_vivos.csv` (cod_mun7, year, live_births) and `populacao_idade.csv`
    (cod_mun7, year, age, pop) for every municipality, 1996 to the last census year."""
    rng = np.random.default_rng([seed, 1996])  # its own stream: the census's draws stay as they were
    years = sorted(factors)
    first = years[0]
    base = NATIONAL_BIRTHS * schools / FULL_SCALE_SCHOOLS * weights / weights.sum()
    path = {y: factors[y] for y in years}
    for y in range(first - 1, FIRST_BIRTH_YEAR - MAX_AGE - 1, -1):  # back along each municipality's trend
        path[y] = path[y + 1] / (1.0 + growth)
    births = {y: np.rint(base * path[y] * rng.lognormal(0.0, 0.02, len(codes))) for y in sorted(path)}
    birth_years = [y for y in sorted(path) if y >= FIRST_BIRTH_YEAR]
    born = pl.DataFrame({"cod_mun7": np.repeat(codes, len(birth_years)),
                         "year": np.tile(birth_years, len(codes)),
                         "live_births": np.array([births[y][i] for i in range(len(codes)) for y in birth_years])})
    rows = [(codes, y, a, np.rint(births[y - a] * SURVIVAL_PER_YEAR**a)) for y in birth_years for a in range(MAX_AGE + 1)
            if y >= 2000]
    population = pl.DataFrame({
        "cod_mun7": np.concatenate([r[0] for r in rows]),
        "year": np.concatenate([np.full(len(codes), r[1]) for r in rows]),
        "age": np.concatenate([np.full(len(codes), r[2]) for r in rows]),
        "pop": np.concatenate([r[3] for r in rows]),
    })
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in ((BIRTHS_FILE, born.sort("cod_mun7", "year")), (POPULATION_FILE, population.sort("cod_mun7", "year", "age"))):
        atomic.write_csv(folder / name, frame.with_columns(pl.col(c).cast(pl.Int64) for c in frame.columns))
        written.append(folder / name)
    return written
