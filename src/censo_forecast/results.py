"""The tables a walk-forward's predictions make, stage by stage: resultados_finais.csv (with
the choice of model per stage and horizon), interval coverage, error by school size and
stage totals. A stage's tables are computed once (`stage_results`) and the run's are their
concatenation (`combine`): the predictions of all stages are never copied into one frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from censo_forecast import intervals, models
from censo_forecast.inep.catalog import SCHOOL, YEAR
from censo_forecast.outputs import (
    ACTUAL,
    ACTUAL_TOTAL,
    APE_MUNICIPALITIES,
    APE_STATES,
    CHOSEN,
    COVERAGE_80,
    COVERAGE_80_MEAN,
    COVERAGE_95,
    COVERAGE_95_MEAN,
    FOLDS,
    FORECAST,
    HORIZON,
    MAE,
    MAE_MEAN,
    MODEL,
    ORIGIN,
    R2,
    R2_MEAN,
    RMSE,
    RMSE_MEAN,
    ROWS,
    SAMPLES,
    SEED_COLUMNS,
    SIZE_BIN,
    SIZE_LABEL,
    SKILL_OF_CHOICE,
    SKILL_VS_COHORT,
    SKILL_VS_PERSISTENCE,
    STAGE,
    SUM_OF_PARTS,
    WAPE,
    WAPE_MEAN,
)
from censo_forecast.validation import StageCV, by_horizon

REPORTED = (*models.MODEL_NAMES, SUM_OF_PARTS)  # a sum of stages publishes its parts' forecasts summed


@dataclass
class StageResults:
    """One stage's tables."""

    summary: pl.DataFrame  # its rows of resultados_finais.csv, the choice included
    coverage: pl.DataFrame  # interval coverage per model, horizon and test year
    error_by_size: pl.DataFrame  # MAE per model, horizon and school-size bin
    totals: pl.DataFrame  # actual and forecast stage totals per horizon, test year and model

    @property
    def chosen(self) -> dict[int, str]:
        """{years ahead: the model chosen}."""
        return next(iter(chosen_models(self.summary).values()), {})


def stage_results(cv: StageCV, parts: list[StageCV] | None = None) -> StageResults:
    """A stage's tables; with `parts`, those of a sum of stages (`coherence.walk_forward`):
    it publishes `SUM_OF_PARTS` at every horizon, its skill that of its parts' choices."""
    coverage = coverage_table(cv.predictions)
    summary = summarize(cv.folds, interval_and_totals_table(cv.predictions, coverage))
    if parts is None:
        skill = choice_skill(cv.folds)
    else:
        summary = summary.with_columns((pl.col(MODEL) == SUM_OF_PARTS).alias(CHOSEN))
        skill = sum_of_parts_choice_skill(cv, parts)
    summary = summary.join(skill, on=[STAGE, HORIZON], how="left", maintain_order="left").with_columns(
        pl.when(pl.col(CHOSEN)).then(pl.col(SKILL_OF_CHOICE)).alias(SKILL_OF_CHOICE))
    return StageResults(summary, coverage, error_by_size(cv.predictions), totals_by_year(cv.predictions))


@dataclass
class CVResult:
    """Every validated stage's walk-forward, as the tables a run writes."""

    summary: pl.DataFrame  # resultados_finais
    stage_predictions: list[pl.DataFrame]  # cv_predictions, one frame per stage (nationally tens of millions of rows)
    folds: pl.DataFrame  # per horizon and test year metrics
    coverage: pl.DataFrame  # interval coverage per stage, model, horizon and test year
    error_by_size: pl.DataFrame  # MAE per stage, model, horizon and school-size bin
    totals: pl.DataFrame  # actual and forecast stage totals per horizon, test year and model

    @property
    def predictions(self) -> pl.DataFrame:
        """Every stage's walk-forward predictions in one frame (a copy: large nationally)."""
        return pl.concat(self.stage_predictions, how="diagonal")


def combine(stages: list[tuple[StageCV, StageResults]]) -> CVResult:
    """The stages' results as one CVResult; resultados_finais is ordered by horizon, then stage."""
    return CVResult(
        pl.concat([r.summary for _, r in stages]).sort(HORIZON, maintain_order=True),
        [cv.predictions for cv, _ in stages],
        pl.concat([cv.folds for cv, _ in stages]),
        pl.concat([r.coverage for _, r in stages]),
        pl.concat([r.error_by_size for _, r in stages]),
        pl.concat([r.totals for _, r in stages]),
    )


def totals_error(predictions: pl.DataFrame, model: str) -> dict[str, float | None]:
    """Mean absolute percentage error of municipal and state totals over the test years
    (the rows of one horizon)."""
    out: dict[str, float | None] = {}
    for key, label in (("CO_MUNICIPIO", APE_MUNICIPALITIES), ("CO_UF", APE_STATES)):
        sums = (predictions.group_by(key, YEAR).agg(pl.col(ACTUAL).sum(), pl.col(model).sum())
                .filter(pl.col(ACTUAL) > 0).sort(key, YEAR))  # sorted: a reproducible float sum
        out[label] = float(((sums[model] - sums[ACTUAL]).abs() / sums[ACTUAL]).mean()) if sums.height else None
    return out


def coverage_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Interval coverage per stage, model, horizon and test year, each test year Y at horizon h
    calibrated only on the residuals known at its origin (target years <= Y - h)."""
    frames = [
        intervals.coverage_by_year(rows, model, h).with_columns(pl.lit(flag).alias(STAGE), pl.lit(h).alias(HORIZON))
        for flag in predictions[STAGE].unique(maintain_order=True)
        for h, rows in by_horizon(predictions.filter(pl.col(STAGE) == flag))
        for model in model_names(rows)
    ]
    schema = pl.Schema({STAGE: pl.String(), MODEL: pl.String(), HORIZON: pl.Int32(), YEAR: pl.Int64(),
                        COVERAGE_80: pl.Float64(), COVERAGE_95: pl.Float64(), ROWS: pl.Int64()})
    frames = [f.select(list(schema)).cast(schema) for f in frames if f.height]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def interval_and_totals_table(predictions: pl.DataFrame, coverage: pl.DataFrame) -> pl.DataFrame:
    """Per (etapa, modelo, horizonte): mean interval coverage over test years and the error
    of municipal and state totals."""
    totals = pl.DataFrame(
        [{STAGE: flag, MODEL: model, HORIZON: h, **totals_error(rows, model)}
         for flag in predictions[STAGE].unique(maintain_order=True)
         for h, rows in by_horizon(predictions.filter(pl.col(STAGE) == flag)) for model in model_names(rows)],
        schema={STAGE: pl.String, MODEL: pl.String, HORIZON: pl.Int32,
                APE_MUNICIPALITIES: pl.Float64, APE_STATES: pl.Float64},
    )
    means = coverage.group_by(STAGE, MODEL, HORIZON).agg(
        pl.col(COVERAGE_80).mean().alias(COVERAGE_80_MEAN), pl.col(COVERAGE_95).mean().alias(COVERAGE_95_MEAN))
    return totals.join(means, on=[STAGE, MODEL, HORIZON], how="left")


def summarize(folds: pl.DataFrame, intervals_and_totals: pl.DataFrame | None = None) -> pl.DataFrame:
    """resultados_finais.csv: one row per (etapa, modelo, horizonte), means over test years,
    skill vs persistence and vs cohort progression, and the model chosen (`Escolhido`); the
    seed's columns first. With the predictions' `interval_and_totals_table`, also interval
    coverage and the error of municipal and state totals."""
    keys = [STAGE, MODEL, HORIZON]
    table = folds.group_by(keys, maintain_order=True).agg(
        pl.col(R2).mean().alias(R2_MEAN),
        pl.col(RMSE).mean().alias(RMSE_MEAN),
        pl.col(MAE).mean().alias(MAE_MEAN),
        pl.col(WAPE).mean().alias(WAPE_MEAN),
        pl.len().alias(FOLDS),
        pl.col(ROWS).sum().alias(SAMPLES),
    )
    for baseline, column in ((models.PERSISTENCE, SKILL_VS_PERSISTENCE), (models.COHORT, SKILL_VS_COHORT)):
        reference = table.filter(pl.col(MODEL) == baseline).select(STAGE, HORIZON, pl.col(MAE_MEAN).alias("_mae_b"))
        table = table.join(reference, on=[STAGE, HORIZON], how="left").with_columns(
            (1 - pl.col(MAE_MEAN) / pl.col("_mae_b")).alias(column)).drop("_mae_b")
    best = table.group_by(STAGE, HORIZON).agg(pl.col(MODEL).sort_by(MAE_MEAN).first().alias("_best"))
    table = table.join(best, on=[STAGE, HORIZON], maintain_order="left").with_columns((pl.col(MODEL) == pl.col("_best")).alias(CHOSEN))
    columns = [*SEED_COLUMNS, HORIZON, SKILL_VS_COHORT, FOLDS, SAMPLES]
    if intervals_and_totals is not None:
        table = table.join(intervals_and_totals, on=keys, how="left", maintain_order="left")
        columns += [COVERAGE_80_MEAN, COVERAGE_95_MEAN, APE_MUNICIPALITIES, APE_STATES]
    return table.sort(HORIZON, maintain_order=True).select(*columns, CHOSEN)


def choices_as_made(folds: pl.DataFrame) -> pl.DataFrame:
    """(etapa, horizonte, ano_origem, modelo): the model the product would have chosen at each
    origin O, the lowest mean MAE over the folds known at O (test year <= O); origins where
    none is known are left out."""
    folds = folds.with_columns((pl.col(YEAR) - pl.col(HORIZON)).alias(ORIGIN))
    frames = []
    for origin in sorted(folds[ORIGIN].unique().to_list()):
        means = folds.filter(pl.col(YEAR) <= origin).group_by(STAGE, HORIZON, MODEL).agg(pl.col(MAE).mean())
        frames.append(means.sort(MAE, MODEL).group_by(STAGE, HORIZON).agg(pl.col(MODEL).first())
                      .with_columns(pl.lit(origin, dtype=folds.schema[ORIGIN]).alias(ORIGIN)))
    schema = pl.Schema({STAGE: pl.String(), HORIZON: folds.schema[HORIZON], MODEL: pl.String(), ORIGIN: folds.schema[ORIGIN]})
    return pl.concat([f.select(list(schema)) for f in frames]) if frames else pl.DataFrame(schema=schema)


def choice_skill(folds: pl.DataFrame) -> pl.DataFrame:
    """Per (etapa, horizonte): 1 - MAE of the choice as the product makes it / persistence's:
    at each origin the model of `choices_as_made`, scored on the forecasts made there; means
    over the origins where a choice could be made (none, so null, where a horizon's first
    fold is also its last)."""
    folds = folds.with_columns((pl.col(YEAR) - pl.col(HORIZON)).alias(ORIGIN))
    persistence = folds.filter(pl.col(MODEL) == models.PERSISTENCE).select(STAGE, HORIZON, ORIGIN, pl.col(MAE).alias("_p"))
    made = folds.join(choices_as_made(folds), on=[STAGE, HORIZON, ORIGIN, MODEL]).join(persistence, on=[STAGE, HORIZON, ORIGIN])
    return _skill(made.select(STAGE, HORIZON, MAE, "_p"))


def sum_of_parts_choice_skill(cv: StageCV, parts: list[StageCV]) -> pl.DataFrame:
    """`choice_skill` of a sum of stages: at each origin, each part's choice as made there
    (`choices_as_made`), summed school by school and scored against the sum's truth."""
    keys = [SCHOOL, YEAR, ORIGIN, HORIZON]
    picked = []
    for part in parts:
        picks = choices_as_made(part.folds).select(HORIZON, ORIGIN, MODEL).cast(
            {HORIZON: part.predictions.schema[HORIZON], ORIGIN: part.predictions.schema[ORIGIN]})
        value = pl.coalesce(pl.when(pl.col(MODEL) == m).then(pl.col(m)) for m in model_names(part.predictions))
        picked.append(part.predictions.join(picks, on=[HORIZON, ORIGIN]).select(*keys, value.alias("_made")))
    made = pl.concat(picked).group_by(keys).agg(pl.col("_made").sum())
    scored = cv.predictions.join(made, on=keys).group_by(HORIZON, YEAR).agg(
        (pl.col("_made") - pl.col(ACTUAL)).abs().mean().alias(MAE), (pl.col(models.PERSISTENCE) - pl.col(ACTUAL)).abs().mean().alias("_p"))
    return _skill(scored.select(pl.lit(cv.flag).alias(STAGE), HORIZON, MAE, "_p"))


def _skill(scored: pl.DataFrame) -> pl.DataFrame:
    """(etapa, horizonte, skill of the choice) from the MAE of the choice and of persistence per fold."""
    return scored.group_by(STAGE, HORIZON).agg((1 - pl.col(MAE).mean() / pl.col("_p").mean()).cast(pl.Float64).alias(SKILL_OF_CHOICE))


def model_names(predictions: pl.DataFrame) -> list[str]:
    """The models a predictions frame holds forecasts of (a stage without demography has no
    Demografia; a frame of several stages holds it as nulls for those), in `REPORTED` order."""
    return [m for m in REPORTED if m in predictions.columns and predictions[m].null_count() < predictions.height]


def error_by_size(predictions: pl.DataFrame) -> pl.DataFrame:
    """MAE per stage, model, horizon and school-size bin (intervals' bins of the origin year's enrollment)."""
    names = model_names(predictions)
    binned = predictions.select(STAGE, HORIZON, ACTUAL, *names,
                                pl.Series(SIZE_BIN, intervals.cv_size_bins(predictions), dtype=pl.Int8))
    wide = binned.group_by(STAGE, HORIZON, SIZE_BIN).agg(
        *((pl.col(m) - pl.col(ACTUAL)).abs().mean().alias(m) for m in names), pl.len().cast(pl.Int64).alias(ROWS))
    table = wide.unpivot(index=[STAGE, HORIZON, SIZE_BIN, ROWS], on=names, variable_name=MODEL, value_name=MAE)
    table = table.with_columns(pl.col(SIZE_BIN).replace_strict(dict(enumerate(intervals.size_labels())),
                                                              return_dtype=pl.String).alias(SIZE_LABEL))
    order = pl.col(MODEL).replace_strict({m: i for i, m in enumerate(REPORTED)}, return_dtype=pl.Int8)
    return (table.sort(STAGE, HORIZON, order, SIZE_BIN)
            .select(STAGE, MODEL, HORIZON, SIZE_BIN, SIZE_LABEL, ROWS, pl.col(MAE).cast(pl.Float64)))


def totals_by_year(predictions: pl.DataFrame) -> pl.DataFrame:
    """Actual and forecast stage totals per horizon, test year and model (sums of the school rows)."""
    names = model_names(predictions)
    index = [STAGE, HORIZON, YEAR]
    wide = predictions.group_by(index).agg(pl.col(ACTUAL, *names).sum())
    return (wide.unpivot(index=[*index, ACTUAL], on=names, variable_name=MODEL, value_name=FORECAST)
            .rename({ACTUAL: ACTUAL_TOTAL}).sort(index, maintain_order=True)
            .select(STAGE, MODEL, HORIZON, YEAR, ACTUAL_TOTAL, FORECAST))


def chosen_models(summary: pl.DataFrame) -> dict[str, dict[int, str]]:
    """Per stage and horizon, the model `summarize` chose (the best CV MAE, baselines
    included: never worse than persistence or cohort progression at any horizon)."""
    chosen: dict[str, dict[int, str]] = {}
    for flag, h, name in summary.filter(pl.col(CHOSEN)).select(STAGE, HORIZON, MODEL).iter_rows():
        chosen.setdefault(flag, {})[int(h)] = name
    return chosen
