"""Leakage-free features: for target year T, only census years <= T-1 (the origin) are read.

Every feature of an origin row (school, o) comes from the panel at years o, o-1 and o-2
through explicit calendar joins; the truth for o+1 is attached separately. Nothing here
knows about models.
"""

from __future__ import annotations

import polars as pl

from censo_forecast.inep import catalog
from censo_forecast.panel import SCHOOL, YEAR, stage_view, truth

LAGS = (1, 2, 3)  # lag k = census year T-k = origin - (k - 1)
COUNTS = ("enrollment", "teachers", "classes")
AGE_FEATURES = {band: "age_" + band.removeprefix("QT_MAT_BAS_").lower() + "_lag1" for band in catalog.AGE_BANDS}
INFRA_FEATURES = {flag: "has_" + flag.removeprefix("IN_").lower() + "_lag1" for flag in catalog.INFRASTRUCTURE_FLAGS}

FEATURES: tuple[str, ...] = (
    *(f"{c}_lag{k}" for c in COUNTS for k in LAGS),
    "enrollment_mean2", "enrollment_mean3", "enrollment_diff1", "enrollment_diff2", "enrollment_growth1",
    "offered_years_last3", "students_per_teacher", "students_per_class",
    "feeder_enrollment_lag1", "feeder_enrollment_lag2", "feeder_diff1", "feeder_to_stage_ratio",
    "school_enrollment_lag1", *AGE_FEATURES.values(),
    "muni_stage_total_lag1", "muni_stage_growth", "muni_stage_schools_lag1", "school_share_of_muni",
    "state_stage_total_lag1", "state_stage_growth",
    "dependency", "rural", "state_code", *INFRA_FEATURES.values(), "years_since_first_seen",
)
ANCHOR = "enrollment_lag1"  # last observed enrollment: persistence, and the base the models add a change to
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
    **{v: k.removeprefix("QT_MAT_BAS_").replace("_MAIS", "+").replace("_", "-") + " year-olds in school" for k, v in AGE_FEATURES.items()},
    **{v: v.removeprefix("has_").removesuffix("_lag1").replace("_", " ") for v in INFRA_FEATURES.values()},
}


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num/den, null when den is not positive (no 1e-6 blow-ups)."""
    return pl.when(den > 0).then(num / den).otherwise(None)


def _lagged(view: pl.DataFrame, k: int, columns: dict[str, str]) -> pl.DataFrame:
    """Values of census year o-(k-1), keyed by origin o."""
    return view.select(
        SCHOOL, (pl.col(YEAR) + (k - 1)).alias(YEAR), *(pl.col(src).alias(dst) for src, dst in columns.items())
    )


AREAS = {"CO_MUNICIPIO": "muni", "CO_UF": "state"}


def area_sums(view: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each area's stage enrollment and offering schools per year, from the active rows.

    Sums are additive: an engine that holds schools in partitions adds the partitions'
    sums (`combine_area_sums`) and gets the same totals as one machine, exactly (counts
    are whole numbers, far below float32's 2**24).
    """
    active = view.filter(pl.col("active"))
    return {key: active.group_by(key, YEAR).agg(pl.col("enrollment").sum().alias("total"),
                                                pl.col("offers").sum().alias("schools"))
            for key in AREAS}


def combine_area_sums(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    return {key: pl.concat([p[key] for p in parts]).group_by(key, YEAR).agg(pl.col("total").sum(), pl.col("schools").sum())
            for key in AREAS}


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
    )


def origin_features(panel: pl.DataFrame, flag: str, sums: dict[str, pl.DataFrame] | None = None) -> pl.DataFrame:
    """Feature rows for every origin year o: schools active and offering the stage at o.

    Columns: CO_ENTIDADE, origin_year, target_year (= o + 1), CO_MUNICIPIO, CO_UF and FEATURES.
    `sums`: area sums over every school (an engine's combined partitions); default: this panel's.
    """
    view = stage_view(panel, flag)
    rows = view.filter(pl.col("offers")).select(
        SCHOOL, YEAR, "first_year", "CO_MUNICIPIO", "CO_UF", "TP_DEPENDENCIA", "TP_LOCALIZACAO",
        "QT_MAT_BAS", *catalog.AGE_BANDS, *catalog.INFRASTRUCTURE_FLAGS,
    )
    for k in LAGS:
        cols = {c: f"{c}_lag{k}" for c in COUNTS} | {"offers": f"offers_lag{k}"}
        if k <= 2:
            cols["feeder_enrollment"] = f"feeder_enrollment_lag{k}"
        rows = rows.join(_lagged(view, k, cols), on=[SCHOOL, YEAR], how="left")
    sums = sums if sums is not None else area_sums(view)
    muni = _area_features(sums["CO_MUNICIPIO"], "CO_MUNICIPIO")
    state = _area_features(sums["CO_UF"], "CO_UF").drop("state_stage_schools_lag1")
    rows = rows.join(muni, on=["CO_MUNICIPIO", YEAR], how="left").join(state, on=["CO_UF", YEAR], how="left")
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
    )
    return out.select(
        SCHOOL,
        pl.col(YEAR).alias("origin_year"),
        (pl.col(YEAR) + 1).alias("target_year"),
        "CO_MUNICIPIO",
        "CO_UF",
        *(pl.col(f).cast(pl.Float32) for f in FEATURES),
    ).sort("origin_year", SCHOOL)


def with_truth(features: pl.DataFrame, panel: pl.DataFrame, flag: str, last_year: int | None = None) -> pl.DataFrame:
    """Attach y_true for target years up to the last census year (default: the panel's last);
    0 where the school closed, became inactive, stopped offering the stage or left the census."""
    last = last_year if last_year is not None else panel.select(pl.col(YEAR).max()).item()
    observed = features.filter(pl.col("target_year") <= last)
    return observed.join(truth(panel, flag), on=[SCHOOL, "target_year"], how="left").with_columns(
        pl.col("y_true").fill_null(0.0)
    )
