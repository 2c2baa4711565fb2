"""What is known of births and population at an origin year, on the census panel's rows.

A forecast made at origin o (the census of year o, published early in o + 1) knows the
births up to year o - BIRTHS_LAG and the population estimates up to o - POPULATION_LAG:
SINASC's preliminary births of a year come out during the next, its final ones about 18
months after. Each panel row (school, o) gets

- `births_before_j`, j = 1 .. MAX_AGE: the births of year o - j in its municipality. A year
  after the file's last is the last year's births (the future's cohorts are unknown; they
  are taken as the latest known);
- `populacao_<FLAG>`: the population of each stage's ages in year o - 1 (the latest known
  year when the file ends earlier).

So nothing dated after what is known at o can reach a feature of o. A stage's cohort in
year o + h, the children of its ages a0..a1 then, was born in years o + h - a: `cohort`
reads `births_before_j` with j = max(a - h, BIRTHS_LAG) (a year not yet known is the
latest known), and is null when any of its years is missing (the file's first years, a
municipality the file lacks), never a partial sum.
"""

from __future__ import annotations

import logging

import polars as pl

from censo_forecast.demography import tables
from censo_forecast.demography.tables import Demography
from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import YEAR

MUNICIPALITY = "CO_MUNICIPIO"  # the census's 7-digit code

log = logging.getLogger(__name__)

BIRTHS_LAG = 1  # births of years <= o - 1 are known at origin o
POPULATION_LAG = 1
MAX_AGE = max(s.ages[1] for s in catalog.STAGES if s.ages is not None)
POPULATION = "age_population"  # a stage view's column: its ages' population in its municipality


def births_column(years_before: int) -> str:
    return f"births_before_{years_before}"


BIRTH_COLUMNS = tuple(births_column(j) for j in range(BIRTHS_LAG, MAX_AGE + 1))
POPULATION_COLUMNS = tuple(tables.population_column(s.flag) for s in catalog.STAGES if s.ages is not None)


def present(panel: pl.DataFrame) -> bool:
    """Whether the panel carries demography (`attach`)."""
    return BIRTH_COLUMNS[0] in panel.columns


def attach(panel: pl.DataFrame, demography: Demography | None) -> pl.DataFrame:
    """The panel with the births and population known at each row's year (see the module's
    docstring); unchanged without demography. A census municipality the files lack is a
    logged gap: its rows carry nulls."""
    if demography is None:
        return panel
    key = tables.MUNICIPALITY
    areas = panel.select(MUNICIPALITY, YEAR).unique().with_columns(
        tables.municipality6(pl.col(MUNICIPALITY).cast(pl.Int64)).alias(key))
    births = demography.births.select(pl.col(key).cast(pl.Int64), pl.col(tables.YEAR).cast(pl.Int64).alias(YEAR),
                                      tables.BIRTHS)
    last_known = births.select(pl.col(YEAR).max()).item()
    wanted_until = areas.select(pl.col(YEAR).max()).item() - BIRTHS_LAG
    if wanted_until > last_known:  # later years: the latest year's births
        latest = births.filter(pl.col(YEAR) == last_known)
        births = pl.concat([births, *(latest.with_columns(pl.lit(y, dtype=pl.Int64).alias(YEAR))
                                      for y in range(last_known + 1, wanted_until + 1))])
        log.info("demography: births end in %d; later years' cohorts are taken as %d's", last_known, last_known)
    rows = areas.with_columns(pl.col(YEAR).cast(pl.Int64))
    for j in range(BIRTHS_LAG, MAX_AGE + 1):
        rows = rows.join(births.select(key, (pl.col(YEAR) + j).alias(YEAR),
                                       pl.col(tables.BIRTHS).cast(pl.Float32).alias(births_column(j))),
                         on=[key, YEAR], how="left")
    rows = _with_population(rows, demography.population)
    lacking = ~pl.col(key).is_in(demography.births[key].unique().cast(pl.Int64).implode())
    missing = sorted(areas.filter(lacking)[MUNICIPALITY].unique().drop_nulls().to_list())
    if missing:
        log.warning("demography: %d census municipalities have no births in %s (their demographic features are "
                    "empty): %s%s", len(missing), demography.source, ", ".join(map(str, missing[:10])),
                    " ..." if len(missing) > 10 else "")
    return join_known(panel, rows.drop(key).with_columns(pl.col(YEAR).cast(panel[YEAR].dtype)))


def known_table(panel: pl.DataFrame) -> pl.DataFrame | None:
    """What `attach` added, per (municipality, year): small, so an engine whose workers build the
    panel from the cache sends it to them (`join_known`); None without demography."""
    if not present(panel):
        return None
    return panel.select(MUNICIPALITY, YEAR, *BIRTH_COLUMNS, *POPULATION_COLUMNS).unique([MUNICIPALITY, YEAR])


def join_known(panel: pl.DataFrame, table: pl.DataFrame | None) -> pl.DataFrame:
    """The panel with a `known_table` joined by municipality and year (unchanged without one)."""
    if table is None:
        return panel
    return panel.join(table, on=[MUNICIPALITY, YEAR], how="left", maintain_order="left")


def _with_population(rows: pl.DataFrame, population: pl.DataFrame) -> pl.DataFrame:
    """Each row's population of every stage's ages in year o - POPULATION_LAG, or in the file's
    last year when that is earlier (estimates end before the census does)."""
    key = tables.MUNICIPALITY
    if population.height == 0:
        return rows.with_columns(pl.lit(None, dtype=pl.Float32).alias(c) for c in POPULATION_COLUMNS)
    last = population[tables.YEAR].max()
    known = population.select(pl.col(key).cast(pl.Int64), pl.col(tables.YEAR).cast(pl.Int64).alias("_from"),
                              *(pl.col(c).cast(pl.Float32) for c in POPULATION_COLUMNS))
    at = pl.min_horizontal(pl.col(YEAR).cast(pl.Int64) - POPULATION_LAG, pl.lit(last, dtype=pl.Int64)).alias("_from")
    return rows.with_columns(at).join(known, on=[key, "_from"], how="left").drop("_from")


def view_columns(panel: pl.DataFrame, stage: catalog.Stage) -> list[pl.Expr]:
    """A stage view's demographic columns: the births known, and its ages' population."""
    if not present(panel) or stage.ages is None:
        return []
    return [*(pl.col(c) for c in BIRTH_COLUMNS), pl.col(tables.population_column(stage.flag)).alias(POPULATION)]


def age_cohort(age: int, horizon: int) -> pl.Expr:
    """The births of the children of one age in year o + `horizon` (negative: before o), as known at o."""
    return pl.col(births_column(max(age - horizon, BIRTHS_LAG)))


def cohort(stage: catalog.Stage, horizon: int) -> pl.Expr:
    """The births of the children of the stage's ages in year o + `horizon`, as known at o."""
    if stage.ages is None:
        return pl.lit(None, dtype=pl.Float32)
    first, last = stage.ages
    total = age_cohort(first, horizon)
    for age in range(first + 1, last + 1):
        total = total + age_cohort(age, horizon)  # null when any year is missing: never a partial cohort
    return total


def birth_ratio(stage: catalog.Stage, horizon: int, view_columns: list[str]) -> pl.Expr:
    """The stage's cohort in o + h over its cohort in o: how the children of its ages change
    in number (null without demography, or where a cohort is incomplete)."""
    if stage.ages is None or BIRTH_COLUMNS[0] not in view_columns:
        return pl.lit(None, dtype=pl.Float32)
    now, then = cohort(stage, 0), cohort(stage, horizon)
    return pl.when(now > 0).then(then / now)
