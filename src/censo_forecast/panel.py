"""The (school, year) panel and its per-stage views, keyed by calendar year.

Rows are sorted by school and year, one per pair. Lags look up the row of calendar year
`year - k` of the same school (`features._back`), so a year in which a school is missing
from the census is a gap (null), not last-but-one year's value.
"""

from __future__ import annotations

import logging

import polars as pl

from censo_forecast.demography import known
from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import SCHOOL, YEAR

log = logging.getLogger(__name__)

# school-level columns every stage view carries (the features read them)
SCHOOL_ATTRIBUTES = (
    "CO_MUNICIPIO", "CO_UF", "TP_DEPENDENCIA", "TP_LOCALIZACAO", "QT_MAT_BAS",
    *catalog.AGE_BANDS, *catalog.INFRASTRUCTURE_FLAGS,
)


def build_panel(census: pl.DataFrame) -> pl.DataFrame:
    """One row per (CO_ENTIDADE, NU_ANO_CENSO) with an `active` flag and first appearance."""
    duplicated = census.select(pl.struct(SCHOOL, YEAR).is_duplicated().sum()).item()
    if duplicated:
        log.warning("panel: %d duplicated (CO_ENTIDADE, NU_ANO_CENSO) rows; keeping the first of each", duplicated)
        census = census.unique(subset=[SCHOOL, YEAR], keep="first", maintain_order=True)
    return census.with_columns(
        (pl.col("TP_SITUACAO_FUNCIONAMENTO") == catalog.SITUATION_ACTIVE).alias("active"),
        pl.col(YEAR).min().over(SCHOOL).alias("first_year"),
    ).sort(SCHOOL, YEAR)


def offers(flag: str) -> pl.Expr:
    """Whether a (school, year) row offers the stage: an active school with the stage's offer
    flag set (never null)."""
    return (pl.col("active") & (pl.col(flag) == 1)).fill_null(False)


def stage_view(panel: pl.DataFrame, flag: str) -> pl.DataFrame:
    """(school, year) rows for one stage: whether it is offered and its counts.

    Counts are those of active schools (blank -> 0 when the school is active); for
    inactive rows they are null: unknown, not zero.
    """
    stage = catalog.stage(flag)
    active = pl.col("active")
    feeder = catalog.stage(stage.feeder) if stage.feeder else None
    count = lambda col: pl.when(active).then(pl.col(col).fill_null(0)).otherwise(None)  # noqa: E731
    return panel.select(
        SCHOOL,
        YEAR,
        "active",
        "first_year",
        *SCHOOL_ATTRIBUTES,
        offers(stage.flag).alias("offers"),
        count(stage.enrollment).cast(pl.Float32).alias("enrollment"),
        count(stage.teachers).cast(pl.Float32).alias("teachers"),
        count(stage.classes).cast(pl.Float32).alias("classes"),
        (count(feeder.enrollment) if feeder else pl.lit(None)).cast(pl.Float32).alias("feeder_enrollment"),
        *cohort_columns(stage, feeder),
        *known.view_columns(panel, stage),
    )


def _grade(stage: catalog.Stage, index: int) -> tuple[pl.Expr, pl.Expr]:
    """(count, is real) of a stage's grade `index` (0: entry, grades - 1: last) for active
    schools: the census's per-grade count where the year has grades, else the stage total
    spread evenly over its grades (the usual approximation before 2023)."""
    active = pl.col("active")
    approx = pl.col(stage.enrollment).fill_null(0) / stage.grades
    columns = stage.grade_columns
    if not columns:
        return pl.when(active).then(approx), pl.lit(False)
    real = pl.col(columns[index]).is_not_null()
    return pl.when(active).then(pl.when(real).then(pl.col(columns[index])).otherwise(approx)), active & real


def below_last(j: int) -> str:
    """The column of a stage's grade j places below its last (1: the one that leaves next year)."""
    return f"below_last_{j}"


def cohort_columns(stage: catalog.Stage, feeder: catalog.Stage | None) -> list[pl.Expr]:
    """What cohort progression reads, per (school, year): the entry grade, the last grade
    (pupils leaving the stage), the pupils who stay in it (the rest), whether the grades are
    the census's own, the grades between (`below_last`: who leaves in the years after next)
    and the feeding stage's last grade (the cohort carried into the stage)."""
    last_index = stage.grades - 1
    entry, entry_real = _grade(stage, 0)
    last, last_real = _grade(stage, last_index)
    enrollment = pl.col(stage.enrollment).fill_null(0)
    feeding = _grade(feeder, feeder.grades - 1)[0] if feeder else pl.lit(None)
    return [
        entry.cast(pl.Float32).alias("entry"),
        last.cast(pl.Float32).alias("leaving"),
        pl.when(pl.col("active")).then(enrollment - last).cast(pl.Float32).alias("continuing"),
        (entry_real & last_real).alias("graded"),
        *(_grade(stage, last_index - j)[0].cast(pl.Float32).alias(below_last(j)) for j in range(1, last_index)),
        feeding.cast(pl.Float32).alias("feeder_leaving"),
    ]
