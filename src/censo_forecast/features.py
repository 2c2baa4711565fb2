"""Leakage-free features: for a target year, only census years <= its origin are read.

Every feature of an origin row (school, o) comes from the panel at calendar years o, o-1
and o-2 of that school (a missing year is a gap, not the row before it). An origin row
forecasts o + 1 .. o + H; what differs by horizon h (the truth in o + h, `y_true_h`, and
the Coorte forecast h years ahead) is held in columns per horizon, which `horizons.stack`
turns into one row per (origin, horizon). One lazy query (`origin_query`) makes the rows of
every origin: training reads the origins whose truth is known, the forecast the last
census year's (`stage_rows`, `forecast_rows`). Only the truth reads a later year. Nothing
here knows about models.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from censo_forecast import cohort
from censo_forecast.demography import known
from censo_forecast.inep import catalog
from censo_forecast.panel import SCHOOL, YEAR, stage_view

LAGS = (1, 2, 3)  # lag k = census year T-k = origin - (k - 1)
COUNTS = ("enrollment", "teachers", "classes")
AGE_FEATURES = {band: "age_" + band.removeprefix("QT_MAT_BAS_").lower() + "_lag1" for band in catalog.AGE_BANDS}
INFRA_FEATURES = {flag: "has_" + flag.removeprefix("IN_").lower() + "_lag1" for flag in catalog.INFRASTRUCTURE_FLAGS}

COHORT_FEATURE = cohort.forecast_column(1)  # the Coorte baseline's forecast (cohort.py), at the row's horizon
HORIZON_FEATURE = "horizon"
BIRTH_RATIO_FEATURE = "birth_ratio"  # at the row's horizon, like the Coorte forecast (`birth_ratio_column`)
FEATURES: tuple[str, ...] = (
    *(f"{c}_lag{k}" for c in COUNTS for k in LAGS),
    "enrollment_mean2", "enrollment_mean3", "enrollment_diff1", "enrollment_diff2", "enrollment_growth1",
    "offered_years_last3", "students_per_teacher", "students_per_class",
    "feeder_enrollment_lag1", "feeder_enrollment_lag2", "feeder_diff1", "feeder_to_stage_ratio",
    "school_enrollment_lag1", *AGE_FEATURES.values(),
    "muni_stage_total_lag1", "muni_stage_growth", "muni_stage_schools_lag1", "school_share_of_muni",
    "state_stage_total_lag1", "state_stage_growth",
    "dependency", "rural", "state_code", *INFRA_FEATURES.values(), "years_since_first_seen",
    # cohort progression (cohort.py): the census's own grades where it has them (null before 2023),
    # the cohort carried into the stage, and the Coorte forecast itself
    "entry_grade_lag1", "last_grade_lag1", "grade_progression_lag1", "feeder_leaving_lag1",
    "muni_feeder_leaving_lag1", "cohort_ratio", "intake_share", COHORT_FEATURE,
    # demography (demography/known.py; null without it): the municipality's birth cohorts of
    # the stage's ages in the target year over those at the origin, its ages' population and
    # the share of it the municipality enrolls
    BIRTH_RATIO_FEATURE, "age_population", "muni_enrollment_rate",
    HORIZON_FEATURE,  # years ahead of the origin: one model serves every horizon (horizons.stack)
)
ORIGIN_FEATURES = FEATURES[:-1]  # what an origin row holds before it is stacked by horizon
ANCHOR = "enrollment_lag1"  # last observed enrollment: persistence, and the base the models add a change to
# column indexes of the model matrix that the baselines and the boosters' change target read
ANCHOR_INDEX, COHORT_INDEX, HORIZON_INDEX, BIRTH_RATIO_INDEX = (
    FEATURES.index(f) for f in (ANCHOR, COHORT_FEATURE, HORIZON_FEATURE, BIRTH_RATIO_FEATURE))
# the columns per horizon of an origin row, which `horizons.stack` reads at each row's horizon
PER_HORIZON = {COHORT_FEATURE: cohort.forecast_column, BIRTH_RATIO_FEATURE: lambda h: birth_ratio_column(h)}
ORIGIN_YEAR, TARGET_YEAR = "origin_year", "target_year"  # an origin row's census year and its first target year
READABLE = {  # labels for plots and reports
    "enrollment_lag1": "enrollment last year", "enrollment_lag2": "enrollment 2 years ago",
    "enrollment_lag3": "enrollment 3 years ago", "teachers_lag1": "teachers last year",
    "teachers_lag2": "teachers 2 years ago", "teachers_lag3": "teachers 3 years ago",
    "classes_lag1": "classes last year", "classes_lag2": "classes 2 years ago", "classes_lag3": "classes 3 years ago",
    "enrollment_mean2": "mean enrollment, last 2 years", "enrollment_mean3": "mean enrollment, last 3 years",
    "enrollment_diff1": "change last year", "enrollment_diff2": "change 2 years ago",
    "enrollment_growth1": "growth rate last year", "offered_years_last3": "years offered (of last 3)",
    "students_per_teacher": "students per teacher", "students_per_class": "students per class",
    "feeder_enrollment_lag1": "feeding stage enrollment last year", "feeder_enrollment_lag2": "feeding stage enrollment 2 years ago",
    "feeder_diff1": "feeding stage change last year", "feeder_to_stage_ratio": "feeding stage / stage enrollment",
    "school_enrollment_lag1": "school total enrollment last year", "muni_stage_total_lag1": "municipal stage total last year",
    "muni_stage_growth": "municipal stage growth", "muni_stage_schools_lag1": "schools offering it in the municipality",
    "school_share_of_muni": "school share of municipality", "state_stage_total_lag1": "state stage total last year",
    "state_stage_growth": "state stage growth", "dependency": "dependency (1 fed..4 private)", "rural": "rural location",
    "state_code": "state (UF code)", "years_since_first_seen": "years since first in the census",
    "entry_grade_lag1": "first grade last year", "last_grade_lag1": "last grade last year",
    "grade_progression_lag1": "grade progression ratio (census grades)", "feeder_leaving_lag1": "cohort leaving the feeding stage",
    "muni_feeder_leaving_lag1": "municipal cohort leaving the feeding stage", "cohort_ratio": "cohort progression ratio",
    "intake_share": "share of the municipal intake", COHORT_FEATURE: "cohort-progression forecast (Coorte)",
    HORIZON_FEATURE: "years ahead", BIRTH_RATIO_FEATURE: "births of the stage's ages, target / origin",
    "age_population": "population of the stage's ages", "muni_enrollment_rate": "municipal enrollment / population",
    **{v: k.removeprefix("QT_MAT_BAS_").replace("_MAIS", "+").replace("_", "-") + " year-olds in school" for k, v in AGE_FEATURES.items()},
    **{v: v.removeprefix("has_").removesuffix("_lag1").replace("_", " ") for v in INFRA_FEATURES.values()},
}


def birth_ratio_column(horizon: int) -> str:
    """The birth-cohort ratio h years ahead (h = 1 is the feature `birth_ratio`)."""
    return BIRTH_RATIO_FEATURE if horizon == 1 else f"{BIRTH_RATIO_FEATURE}_{horizon}"


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num/den, null when den is not positive (no 1e-6 blow-ups)."""
    return pl.when(den > 0).then(num / den).otherwise(None)


def _at_offset(column: str | pl.Expr, years: int) -> pl.Expr:
    """`column` at calendar year o + years of the same school.

    The view holds one row per (school, year), sorted, so that row, when the school has
    it, lies at most |years| rows away; a shifted row counts only when its school and year
    match, so a year missing from the census is a gap (null), never the row before it.
    """
    value = pl.col(column) if isinstance(column, str) else column
    if years == 0:
        return value
    step = -1 if years > 0 else 1  # a later year lies below in the sorted view: a negative shift
    candidates = [
        pl.when((pl.col(SCHOOL).shift(i) == pl.col(SCHOOL)) & (pl.col(YEAR).shift(i) == pl.col(YEAR) + years))
        .then(value.shift(i))
        for i in range(step, -years + step, step)
    ]
    return candidates[0] if len(candidates) == 1 else pl.coalesce(candidates)


def _back(column: str | pl.Expr, years: int) -> pl.Expr:
    """`column` at calendar year o - years of the same school: what every feature reads."""
    if years < 0:
        raise ValueError("features read only earlier census years; the truth reads later ones (_ahead)")
    return _at_offset(column, -years)


def _ahead(column: str | pl.Expr, years: int) -> pl.Expr:
    """`column` at calendar year o + years of the same school: only the truth reads this."""
    return _at_offset(column, years)


def _sorted(view: pl.DataFrame) -> pl.DataFrame:
    """The view in (school, year) order, which `_back` relies on; the panel's order costs one check."""
    school, year = pl.col(SCHOOL), pl.col(YEAR)
    ascending = (school > school.shift(1)) | ((school == school.shift(1)) & (year > year.shift(1)))
    return view if view.select(ascending.slice(1).all()).item() in (True, None) else view.sort(SCHOOL, YEAR)


AREAS = {"CO_MUNICIPIO": "muni", "CO_UF": "state"}
ENGINE: Final = "in-memory"  # polars' streaming default took twice as long on these whole-view shifts


def area_sums(view: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each area's stage enrollment and offering schools per year, from the active rows.

    Sums are additive: an engine that holds schools in partitions adds the partitions'
    sums (`combine_area_sums`) and gets the same totals as one machine, exactly (counts
    are whole numbers, far below float32's 2**24).
    """
    # rows that add nothing (not offering, no enrollment) are left out before grouping: the
    # sums are the same, and an area-year without any is never looked up by an offering row
    rows = _with_flows(view).lazy()
    adding = rows.filter(pl.col("active") & (pl.col("offers") | (pl.col("enrollment") != 0)))
    queries = [adding.group_by(key, YEAR).agg(pl.col("enrollment").sum().alias("total"), pl.col("offers").sum().alias("schools"))
               for key in AREAS] + [cohort.area_sums(rows, key) for key in AREAS]
    frames = pl.collect_all(queries, engine=ENGINE)
    return {key: frames[i].join(frames[i + len(AREAS)], on=[key, YEAR], how="full", coalesce=True).fill_null(0)
            for i, key in enumerate(AREAS)}


def _with_flows(view: pl.DataFrame) -> pl.DataFrame:
    """The view in (school, year) order with the cohort flows (cohort.flows), computed once."""
    if "flow_in" in view.columns:
        return view
    view = _sorted(view)
    return view.with_columns(cohort.flows(_back))


def combine_area_sums(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    return {key: pl.concat([p[key] for p in parts]).group_by(key, YEAR).agg(pl.all().sum()) for key in AREAS}


def _area_features(totals: pl.DataFrame, key: str) -> pl.DataFrame:
    """An area's stage total and offering schools at o, and its growth from o-1 to o."""
    prefix = AREAS[key]
    previous = totals.select(key, (pl.col(YEAR) + 1).alias(YEAR), pl.col("total").alias("total_prev"))
    return totals.join(previous, on=[key, YEAR], how="left").select(
        key,
        YEAR,
        pl.col("total").alias(f"{prefix}_stage_total_lag1"),
        (_ratio(pl.col("total"), pl.col("total_prev")) - 1).alias(f"{prefix}_stage_growth"),
        pl.col("schools").alias(f"{prefix}_stage_schools_lag1"),
    ).join(cohort.area_features(totals, key, prefix), on=[key, YEAR], how="left")


def enrolled() -> pl.Expr:
    """The truth rule, on a stage view's row: its enrollment when the school offers the stage,
    0 when it is active without it or closed (a school missing from the census counts 0 too)."""
    return pl.when(pl.col("offers")).then(pl.col("enrollment")).otherwise(0)


def truth_column(horizon: int) -> str:
    """The stage's enrollment h years after the origin (0 when the school no longer offers it)."""
    return f"y_true_{horizon}"


def origin_query(panel: pl.DataFrame, flag: str, sums: dict[str, pl.DataFrame] | None, truth_until: int | None,
                 horizons: int) -> pl.LazyFrame:
    """The stage's origin rows as one lazy query: calendar lags by row shifts, then the
    offering rows (with the truth of target years up to `truth_until`, the census's last,
    when given; a truth beyond it is null). Training and forecasting filter this query.

    `sums`: area sums over every school (an engine's combined partitions); default: this
    panel's. Columns: CO_ENTIDADE, origin_year, target_year (= o + 1), CO_MUNICIPIO, CO_UF,
    ORIGIN_FEATURES, the Coorte forecast for horizons 2 .. `horizons` and the truth columns,
    sorted by school and origin year.
    """
    view = _with_flows(stage_view(panel, flag))  # once, for the area sums and the rows alike
    sums = sums if sums is not None else area_sums(view)
    lagged = [_back(c, k - 1).alias(f"{c}_lag{k}") for c in (*COUNTS, "offers") for k in LAGS[1:]]
    lagged += [_back("feeder_enrollment", 1).alias("feeder_enrollment_lag2"), *cohort.school_windows(_back)]
    truth = truth_until is not None
    if truth:  # the school's stage enrollment in o + h: 0 when it closed, dropped the stage or left
        lagged += [pl.when(pl.col(YEAR) + h <= truth_until).then(_ahead(enrolled(), h).fill_null(0)).cast(pl.Float64)
                   .alias(truth_column(h)) for h in range(1, horizons + 1)]
    rows = (
        view.lazy()
        .with_columns(*lagged)
        .filter(pl.col("offers"))
        .rename({**{c: f"{c}_lag1" for c in COUNTS}, "offers": "offers_lag1", "feeder_enrollment": "feeder_enrollment_lag1"})
    )
    muni = _area_features(sums["CO_MUNICIPIO"], "CO_MUNICIPIO").lazy()
    state = _area_features(sums["CO_UF"], "CO_UF").drop("state_stage_schools_lag1").lazy()
    rows = (rows.join(muni, on=["CO_MUNICIPIO", YEAR], how="left", maintain_order="left")
            .join(state, on=["CO_UF", YEAR], how="left", maintain_order="left"))
    stage = catalog.stage(flag)
    # an own intake (creche, pre-school) follows its entry age's births where they are given
    entry_age = stage.ages[0] if stage.ages and not stage.fed_intake and known.BIRTH_COLUMNS[0] in view.columns else None
    for step in cohort.forecast(stage.fed_intake, entry_age):
        rows = rows.with_columns(step)
    rows = rows.with_columns(cohort.ahead(h, stage.grades, entry_age) for h in range(2, horizons + 1))
    rows = rows.with_columns(known.birth_ratio(stage, h, view.columns).cast(pl.Float32).alias(birth_ratio_column(h))
                             for h in range(1, horizons + 1))
    population = pl.col(known.POPULATION) if known.POPULATION in view.columns else pl.lit(None, dtype=pl.Float32)
    e1, e2, e3 = (pl.col(f"enrollment_lag{k}") for k in LAGS)
    f1, f2 = pl.col("feeder_enrollment_lag1"), pl.col("feeder_enrollment_lag2")
    infra = {flag_: pl.when(pl.col(flag_).is_in([0, 1])).then(pl.col(flag_)).otherwise(None) for flag_ in catalog.INFRASTRUCTURE_FLAGS}
    out = rows.with_columns(
        pl.mean_horizontal(e1, e2).alias("enrollment_mean2"),
        pl.mean_horizontal(e1, e2, e3).alias("enrollment_mean3"),
        (e1 - e2).alias("enrollment_diff1"),
        (e2 - e3).alias("enrollment_diff2"),
        (_ratio(e1, e2) - 1).alias("enrollment_growth1"),
        pl.sum_horizontal(pl.col(f"offers_lag{k}").cast(pl.Int8).fill_null(0) for k in LAGS).alias("offered_years_last3"),
        _ratio(e1, pl.col("teachers_lag1")).alias("students_per_teacher"),
        _ratio(e1, pl.col("classes_lag1")).alias("students_per_class"),
        (f1 - f2).alias("feeder_diff1"),
        _ratio(f1, e1).alias("feeder_to_stage_ratio"),
        pl.col("QT_MAT_BAS").alias("school_enrollment_lag1"),
        *(pl.col(band).alias(name) for band, name in AGE_FEATURES.items()),
        _ratio(e1, pl.col("muni_stage_total_lag1")).alias("school_share_of_muni"),
        pl.col("TP_DEPENDENCIA").alias("dependency"),
        (pl.col("TP_LOCALIZACAO") == 2).cast(pl.Int8).alias("rural"),
        pl.col("CO_UF").alias("state_code"),
        *(expr.alias(INFRA_FEATURES[f]) for f, expr in infra.items()),
        (pl.col(YEAR) - pl.col("first_year")).alias("years_since_first_seen"),
        pl.when(pl.col("graded")).then(pl.col("entry")).alias("entry_grade_lag1"),
        pl.when(pl.col("graded")).then(pl.col("leaving")).alias("last_grade_lag1"),
        pl.col("feeder_leaving").alias("feeder_leaving_lag1"),
        pl.col("muni_supply_0").alias("muni_feeder_leaving_lag1"),
        population.alias("age_population"),
        _ratio(pl.col("muni_stage_total_lag1"), population).alias("muni_enrollment_rate"),
    )
    return out.select(
        SCHOOL,
        pl.col(YEAR).alias(ORIGIN_YEAR),
        (pl.col(YEAR) + 1).alias(TARGET_YEAR),
        "CO_MUNICIPIO",
        "CO_UF",
        *(pl.col(f).cast(pl.Float32) for f in ORIGIN_FEATURES),
        *(pl.col(column(h)).cast(pl.Float32) for column in PER_HORIZON.values() for h in range(2, horizons + 1)),
        *([truth_column(h) for h in range(1, horizons + 1)] if truth else []),
    )


def stage_rows(panel: pl.DataFrame, flag: str, sums: dict[str, pl.DataFrame] | None = None,
               last_year: int | None = None, *, horizons: int = 1) -> pl.DataFrame:
    """Every origin's rows with the truth h = 1 .. `horizons` years ahead (`truth_column`) known
    by `last_year` (default: the panel's last; an engine's partition passes the whole
    census's): what an engine holds for a stage. The origins before `last_year` train and
    validate; the rows of `last_year` itself are what the forecast reads."""
    last = last_year if last_year is not None else panel.select(pl.col(YEAR).max()).item()
    return origin_query(panel, flag, sums, last, horizons).collect(engine=ENGINE)


def forecast_rows(panel: pl.DataFrame, flag: str, *, horizons: int = 1) -> pl.DataFrame:
    """The rows of the panel's last census year, without truth: what a forecast from it reads.
    They are filtered from `stage_rows` itself, so `predict` reads the very values `run` does
    (polars may round a float32 ratio one ulp apart in a query without the truth columns)."""
    rows = stage_rows(panel, flag, horizons=horizons)
    last = panel.select(pl.col(YEAR).max()).item()
    return rows.filter(pl.col(ORIGIN_YEAR) == last).drop(truth_column(h) for h in range(1, horizons + 1))
