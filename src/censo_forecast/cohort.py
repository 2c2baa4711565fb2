"""The cohort-progression method planners use, as features and as the `Coorte` forecast.

Next year's enrollment of a stage in a school = the pupils who stay in the stage (all but
its last grade) moved up one grade with a progression ratio, plus the intake into its first
grade (see `../shared/methods/cohort-progression.md`):

    Coorte(o + 1) = r × continuing(o) + intake(o + 1)

- r, the progression ratio: pupils past the entry grade in year t over the pupils who could
  move up in t - 1, pooled over the WINDOW transitions up to the origin o. Smoothing: the
  state's ratio; a municipality's shrunk toward its state's with the weight of MUNI_PRIOR
  students, a school's toward its municipality's with SCHOOL_PRIOR students, so a school
  with little history gets its municipality's ratio and a large one its own.
- intake into a stage with a feeding stage: the school's share of its municipality's
  feeding cohort (the feeder's last grade, summed over every school: grade 5 -> 6 and
  9 -> high school often change schools), pooled over the window, times that cohort at o.
  Creche, adult elementary and special classes have no feeder, and most pre-school
  pupils never attended creche (`Stage.own_intake`): the school's mean intake, scaled,
  where births are given (`demography.known`), by the births of the entry age in the
  target year over those of the years the mean came from.
- flows count only schools that offered the stage in both years: a school opening it
  brings its pupils in without a cohort that moved up (its intake is counted as entry).
- bounded, so that an outlier cannot compound over the horizons: the ratio within
  RATIO_BOUNDS, and every forecast at most BOUND_FACTOR times the largest enrollment the
  school ever had in the stage (census years <= o) plus its municipality's feeding cohort
  at o (`BOUND`; 0 for stages without a fed intake).
- Grades are the census's where the year has them (2023 on), else the stage total spread
  evenly over its grades (`panel.cohort_columns`).
- h years ahead the method is applied h times (`ahead`): every grade moves up once a year
  with the same ratio, and each year's intake is the one forecast for o + 1 (the census
  says nothing of later cohorts; planners hold intake constant the same way), or, for a
  stage that takes its own intake and where births are given, follows the entry age's births.

Everything at origin o reads census years <= o. Area sums are additive, so an engine that
holds schools in partitions adds the partitions' sums and gets the same values.
"""

from __future__ import annotations

import polars as pl

from censo_forecast.demography import known
from censo_forecast.panel import SCHOOL, YEAR, below_last

WINDOW = 3  # transitions pooled for ratios and intake shares
SCHOOL_PRIOR = 30.0  # students: weight of the municipal ratio in a school's
MUNI_PRIOR = 200.0  # students: weight of the state ratio in a municipality's
# A year's progression ratio: on the real census of Alagoas (2008-2021) 98 % of the schools'
# smoothed ratios lie within 0.72-1.6; beyond 1.5 a year they compound absurdly.
RATIO_BOUNDS = (0.8, 1.25)
BOUND_FACTOR = 3.0  # a forecast is at most this many times the school's largest enrollment, plus the intake
BOUND = "_cohort_bound"  # the bound's column, on the origin rows before their features are selected
SUMS = ("flow_in", "flow_base", "supply")  # what area_sums adds up per area and year


def flows(back) -> list[pl.Expr]:
    """Per (school, year t), offering rows: pupils past the entry grade in t (flow_in) and the
    pupils who could move up in t - 1 (flow_base); `back(column, k)` reads year t - k."""
    base = back("continuing", 1)
    moved = pl.col("offers") & back("offers", 1).fill_null(False) & base.is_not_null()
    return [
        pl.when(moved).then(pl.col("enrollment") - pl.col("entry")).alias("flow_in"),
        pl.when(moved).then(base).alias("flow_base"),
    ]


def area_sums(frame: pl.LazyFrame, key: str) -> pl.LazyFrame:
    """An area's flows and feeding cohort (over every active school, offering or not) per year."""
    return frame.filter(pl.col("active")).group_by(key, YEAR).agg(
        pl.col("flow_in").sum(), pl.col("flow_base").sum(), pl.col("feeder_leaving").fill_null(0).sum().alias("supply"))


def area_features(totals: pl.DataFrame, key: str, prefix: str) -> pl.DataFrame:
    """Per area and origin year o: flows pooled over the window, and the feeding cohort at
    o - k for k = 0 .. WINDOW (supply_k; null where the area has no row that year)."""
    sums = totals.select(key, YEAR, *SUMS)
    frame = sums.select(key, YEAR)
    for k in range(WINDOW + 1):  # year o's row gets year o - k's sums as <sum>_k
        lagged = sums.select(key, (pl.col(YEAR) + k).alias(YEAR), *(pl.col(c).alias(f"{c}_{k}") for c in SUMS))
        frame = frame.join(lagged, on=[key, YEAR], how="left")
    return frame.select(
        key, YEAR,
        pl.sum_horizontal(f"flow_in_{k}" for k in range(WINDOW)).alias(f"{prefix}_flow_in"),
        pl.sum_horizontal(f"flow_base_{k}" for k in range(WINDOW)).alias(f"{prefix}_flow_base"),
        *(pl.col(f"supply_{k}").alias(f"{prefix}_supply_{k}") for k in range(WINDOW + 1)),
    )


def _shrunk(flow_in: pl.Expr, flow_base: pl.Expr, prior: pl.Expr, weight: float) -> pl.Expr:
    return (flow_in.fill_null(0) + weight * prior) / (flow_base.fill_null(0) + weight)


def school_windows(back) -> list[pl.Expr]:
    """Per (school, origin o), on the whole calendar-sorted view (before rows are filtered):
    the school's flows and intake over the window, and its census-graded progression ratio."""
    window = range(WINDOW)
    both_graded = pl.col("graded") & back("graded", 1).fill_null(False)
    base = back("continuing", 1)
    return [
        pl.sum_horizontal(back("flow_in", k) for k in window).alias("_own_in"),
        pl.sum_horizontal(back("flow_base", k) for k in window).alias("_own_base"),
        *(back("entry", k).alias(f"_entry_{k}") for k in window),
        pl.when(both_graded & (base > 0)).then((pl.col("enrollment") - pl.col("entry")) / base).alias("grade_progression_lag1"),
        pl.col("enrollment").fill_null(0).cum_max().over(SCHOOL).alias("_largest"),  # the view is in (school, year) order
    ]


def _births_scale(entry_age: int | None, horizon: int, base: pl.Expr | None = None) -> pl.Expr:
    """The entry age's births in o + horizon over `base` (default: their mean over the window's
    years o - k, whose entries the mean intake averages); 1 without births or where unknown."""
    if entry_age is None:
        return pl.lit(1.0)
    base = base if base is not None else pl.mean_horizontal(known.age_cohort(entry_age, -k) for k in range(WINDOW))
    return pl.when(base > 0).then(known.age_cohort(entry_age, horizon) / base).fill_null(1.0)


def forecast(fed_intake: bool, entry_age: int | None = None) -> list[list[pl.Expr]]:
    """Expressions, in dependency order, for origin rows that carry `school_windows` and the
    municipal and state columns of `area_features`: ratios, intake, the bound, the Coorte
    forecast. `fed_intake`: the intake is a share of the municipality's feeding cohort;
    `entry_age`: an own intake follows the births of that age (None: held at its mean)."""
    entries = [pl.col(f"_entry_{k}") for k in range(WINDOW)]
    mean_intake = pl.mean_horizontal(entries) * _births_scale(entry_age, 1)
    cohort_intake = pl.col("muni_supply_0").fill_null(0) if fed_intake else pl.lit(0.0)
    if fed_intake:
        # the intake of year o - k over the municipal cohort of o - k - 1, pooled over the pairs
        # where both are known (a new school, or the census's first years, has fewer)
        supplies = [pl.col(f"muni_supply_{k + 1}") for k in range(WINDOW)]
        taken = pl.sum_horizontal(pl.when(s.is_not_null()).then(e) for e, s in zip(entries, supplies, strict=True))
        offered = pl.sum_horizontal(pl.when(e.is_not_null()).then(s) for e, s in zip(entries, supplies, strict=True))
        share: pl.Expr = pl.when(offered > 0).then(taken / offered)
        intake = pl.coalesce(pl.col("intake_share") * pl.col("muni_supply_0"), mean_intake)
    else:
        share, intake = pl.lit(None, dtype=pl.Float64), mean_intake
    state = pl.when(pl.col("state_flow_base") > 0).then(pl.col("state_flow_in") / pl.col("state_flow_base")).otherwise(1.0)
    return [
        [_shrunk(pl.col("muni_flow_in"), pl.col("muni_flow_base"), state, MUNI_PRIOR).alias("_muni_ratio"),
         share.alias("intake_share")],
        [_shrunk(pl.col("_own_in"), pl.col("_own_base"), pl.col("_muni_ratio"), SCHOOL_PRIOR).clip(*RATIO_BOUNDS)
         .alias("cohort_ratio"),
         intake.fill_null(0).alias("_intake"), (BOUND_FACTOR * pl.col("_largest") + cohort_intake).alias(BOUND)],
        [pl.min_horizontal(pl.col("cohort_ratio") * pl.col("continuing") + pl.col("_intake"), pl.col(BOUND))
         .alias("cohort_forecast")],
    ]


def forecast_column(horizon: int) -> str:
    """The Coorte forecast h years ahead (h = 1 is the feature `cohort_forecast`)."""
    return "cohort_forecast" if horizon == 1 else f"cohort_forecast_{horizon}"


def ahead(horizon: int, grades: int, entry_age: int | None = None) -> pl.Expr:
    """Coorte applied `horizon` times, for rows carrying `forecast`'s columns.

    After h years the pupils of grade k are in grade k + h: those below the last h grades
    are still in the stage, r**h of them (`continuing` less the grades that leave in years
    2..h); the intakes of years 1..h have moved up h - 1 .. 0 grades (r**j each), and those
    that reached past the last grade have left. For h = 1 this is `cohort_forecast`. The
    intake of year o + m is o + 1's, times its entry age's births in o + m over those in
    o + 1 when `entry_age` is given.
    """
    r = pl.col("cohort_ratio")
    leaving_later = [pl.col(below_last(j)) if j < grades - 1 else pl.col("entry") for j in range(1, min(horizon, grades))]
    staying = (pl.col("continuing") - pl.sum_horizontal(leaving_later)) if leaving_later else pl.col("continuing")
    first_year = known.age_cohort(entry_age, 1) if entry_age is not None else None
    intakes = sum(r**j * _births_scale(entry_age, horizon - j, first_year) for j in range(min(horizon, grades)))
    return pl.min_horizontal(r**horizon * staying.clip(lower_bound=0) + pl.col("_intake") * intakes,
                             pl.col(BOUND)).alias(forecast_column(horizon))
