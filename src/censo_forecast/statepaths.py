"""State paths a planner can believe: no forecast year moves a state's total of a stage by more
than that state's census ever moved it in one year.

The school models forecast each school; nothing ties their sum, year after year, to what the
state has done. On the real census of Alagoas the published state path of final elementary
changed by up to 15.0 % in a year where the state's census never changed by more than 6.4 %,
at 4 of 8 origins, and pre-school's at 4 of 8 too (benchmarks/README.md, "backtest.py").
The rule: the state's published total of a stage (its schools' forecasts plus the new
offerings expected, as the area files sum them), from the census year through each year
ahead, changes by at most the largest year-to-year change of that state's census total for
the stage; a year beyond it has its schools' forecasts and bounds scaled, all by the same
factor, so that the total meets the limit. Nothing in the census says why a state would
break its own record, so nothing here lets it (births could, one day: issue #23).

Each state's census history of a stage (its totals, openings, drift) is read here, once, for
this limit, for the new offerings the forecast adds and for `reconcile`.
"""

from __future__ import annotations

import logging

import polars as pl

from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import YEAR
from censo_forecast.outputs import BOUNDS, FORECAST, HORIZON, LAST_ENROLLMENT, STAGE
from censo_forecast.panel import SCHOOL, offers

log = logging.getLogger(__name__)
MIN_HISTORY = 3  # census years a state needs before its record limits a path
NEW_OFFERINGS_WINDOW = 3  # new offerings: the mean of the openings of the last three years


def state_history(panel: pl.DataFrame, flag: str, area: str = "CO_UF") -> pl.DataFrame:
    """(CO_UF, NU_ANO_CENSO, total, openings): each state's census total of the stage and the
    enrollment in schools that offered it that year and not the year before (null the first
    year). `area` = "CO_MUNICIPIO": the same per municipality."""
    stage = catalog.stage(flag)
    offering = panel.filter(offers(stage.flag)).select(SCHOOL, YEAR, area, pl.col(stage.enrollment).fill_null(0).cast(pl.Float64))
    before = offering.select(SCHOOL, (pl.col(YEAR) + 1).alias(YEAR), pl.lit(True).alias("_before"))
    first = panel[YEAR].min()
    opened = (offering.join(before, on=[SCHOOL, YEAR], how="left").filter(pl.col("_before").is_null() & (pl.col(YEAR) > first))
              .group_by(area, YEAR).agg(pl.col(stage.enrollment).sum().alias("openings")))
    totals = offering.group_by(area, YEAR).agg(pl.col(stage.enrollment).sum().alias("total"))
    grid = totals.join(opened, on=[area, YEAR], how="left").with_columns(
        pl.when(pl.col(YEAR) > first).then(pl.col("openings").fill_null(0.0)).otherwise(None).alias("openings"))
    return grid.sort(area, YEAR)


def at_origins(history: pl.DataFrame, area: str = "CO_UF") -> pl.DataFrame:
    """(CO_UF, origin, total, drift, new): per state (`area`) and origin year, its census total,
    its last yearly change (total / the year before's) and the mean openings of its last three years."""
    by_area = pl.col(area)
    return history.select(
        area, pl.col(YEAR).alias("origin"), "total",
        (pl.col("total") / pl.col("total").shift(1).over(by_area)).alias("drift"),
        pl.col("openings").rolling_mean(NEW_OFFERINGS_WINDOW, min_samples=1).over(by_area).alias("new"))


def new_per_state(panel: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    """(etapa, CO_UF, new): the enrollment one year of new offerings brings to each state at the
    last census year, the mean of its recent openings (`at_origins`), as the area totals add it."""
    last = panel[YEAR].max()
    return pl.concat([at_origins(state_history(panel, flag)).filter(pl.col("origin") == last)
                      .select(pl.lit(flag).alias(STAGE), "CO_UF", "new") for flag in flags])


def largest_changes(panel: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    """(etapa, CO_UF, limit): the largest absolute year-to-year change, relative, of each
    state's census total of each stage (states with fewer than MIN_HISTORY years left out)."""
    frames = []
    for flag in flags:
        change = (pl.col("total") / pl.col("total").shift(1).over("CO_UF") - 1).abs()
        frames.append(state_history(panel, flag).with_columns(change.alias("_change")).group_by("CO_UF")
                      .agg(pl.col("_change").max().alias("limit"), pl.len().alias("_years"))
                      .filter(pl.col("_years") >= MIN_HISTORY).select(pl.lit(flag).alias(STAGE), "CO_UF", "limit"))
    return pl.concat(frames) if frames else pl.DataFrame(schema={STAGE: pl.String, "CO_UF": pl.Int64, "limit": pl.Float64})


def limit(schools: pl.DataFrame, panel: pl.DataFrame, new_per_year: pl.DataFrame | None = None) -> pl.DataFrame:
    """School forecasts (`forecast.school_forecasts` rows of every stage and horizon) with each
    state's path kept within its record (module docstring); rows keep their order.
    `new_per_year` (etapa, CO_UF, new): the enrollment a year of new offerings is expected to
    bring to each state (h years ahead bring h times it); None: none."""
    if schools.height == 0:
        return schools
    limits = largest_changes(panel, schools[STAGE].unique().to_list())
    sums = (schools.group_by(STAGE, "CO_UF", HORIZON)
            .agg(pl.col(FORECAST).sum().alias("_sum"), pl.col(LAST_ENROLLMENT).sum().alias("_base"))
            .join(limits, on=[STAGE, "CO_UF"], how="inner").sort(STAGE, "CO_UF", HORIZON))
    if new_per_year is not None:
        sums = sums.join(new_per_year.cast({"CO_UF": sums.schema["CO_UF"]}), on=[STAGE, "CO_UF"], how="left")
    sums = sums.with_columns((pl.col("new").fill_null(0.0) if "new" in sums.columns else pl.lit(0.0)).alias("new"))
    factors = []
    for (flag, uf), path in sums.group_by(STAGE, "CO_UF", maintain_order=True):
        previous, bound, new = path["_base"][0], path["limit"][0], path["new"][0]  # the census year's total
        for h, schools_sum in zip(path[HORIZON].to_list(), path["_sum"].to_list(), strict=True):
            total = schools_sum + h * new
            kept = min(max(total, previous * (1 - bound)), previous * (1 + bound))
            if schools_sum > 0 and abs(kept - total) > 1e-9 * total:
                factor = max(kept - h * new, 0.0) / schools_sum
                kept = schools_sum * factor + h * new
                factors.append({STAGE: flag, "CO_UF": uf, HORIZON: h, "_factor": factor})
                log.debug("%s, state %s, %d year(s) ahead: the path changed %+.1f %% in a year, beyond the state's "
                          "record of %.1f %%; its schools' forecasts scaled by %.3f",
                          flag, catalog.UF_ABBREVIATIONS.get(uf, uf), h, 100 * (total / previous - 1), 100 * bound, factor)
            previous = kept
    if not factors:
        return schools
    for (flag,), rows in pl.DataFrame(factors).group_by(STAGE, maintain_order=True):
        states = sorted({catalog.UF_ABBREVIATIONS.get(u, str(u)) for u in rows["CO_UF"].to_list()})
        log.info("%s: %d forecast year(s) of %s scaled to keep the state's path within its largest yearly change "
                 "on record (factors %.3f-%.3f)", flag, rows.height, ", ".join(states), rows["_factor"].min(), rows["_factor"].max())
    scale = pl.DataFrame(factors).cast({"CO_UF": schools.schema["CO_UF"], HORIZON: schools.schema[HORIZON]})
    scaled = [c for c in (FORECAST, *BOUNDS) if c in schools.columns]
    return (schools.join(scale, on=[STAGE, "CO_UF", HORIZON], how="left", maintain_order="left")
            .with_columns((pl.col(c) * pl.col("_factor").fill_null(1.0)).alias(c) for c in scaled).drop("_factor"))
