"""Walk-forward validation by calendar year and horizon, against the baselines.

The walk-forward steps through origin years o ("cuts"). At each, the learners are fitted
on (origin, horizon) pairs whose target year is <= o, then forecast every horizon h from
the rows of origin o (features from census years <= o): the forecast of year Y at horizon h
is made at origin Y - h and has seen nothing after it. Rows of h = 1 are the one-year
walk-forward: test year o + 1, trained on target years <= o.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from censo_forecast import horizons as horizons_mod
from censo_forecast import intervals, models, outputs
from censo_forecast.config import ModelSettings
from censo_forecast.features import ANCHOR, COHORT_FEATURE, FEATURES, HORIZON

log = logging.getLogger(__name__)
ANCHOR_INDEX = FEATURES.index(ANCHOR)
COHORT_INDEX = FEATURES.index(COHORT_FEATURE)
HORIZON_INDEX = FEATURES.index(HORIZON)
HORIZON_COLUMN, ORIGIN_COLUMN = outputs.HORIZON, outputs.ORIGIN


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R2 and WAPE, in students."""
    y_true = np.asarray(y_true, dtype=np.float64)
    err = np.asarray(y_pred, dtype=np.float64) - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    total = float(np.sum(np.abs(y_true)))
    return {
        "MAE": float(np.mean(np.abs(err))),
        "RMSE": float(np.sqrt(np.mean(err**2))),
        "R2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan"),
        "WAPE": float(np.sum(np.abs(err))) / total if total > 0 else float("nan"),
    }


def cut_years(origin_years: list[int], census_years: list[int], min_train_years: int) -> list[int]:
    """The walk-forward's origins: from the one before the (min_train_years+1)-th census year
    (the first one-year test year) to the last; each needs an earlier origin to train on."""
    if len(census_years) <= min_train_years or not origin_years:
        return []
    first_test = sorted(census_years)[min_train_years]
    return [o for o in sorted(origin_years) if o >= first_test - 1 and o > min(origin_years)]


def fit_learner(name: str, X: np.ndarray, y: np.ndarray, settings: ModelSettings, device: models.Device, jobs: int):
    """One boosted model ("LightGBM" or "XGBoost") on the given device."""
    return models.ChangeRegressor(name, ANCHOR_INDEX, settings, device.of(name), jobs).fit(X, y)


def fit_learners(X: np.ndarray, y: np.ndarray, settings: ModelSettings, device: models.Device, jobs: int) -> dict:
    """The two boosted models and their Voting mean, fitted on the same rows."""
    fitted = {name: fit_learner(name, X, y, settings, device, jobs) for name in models.LEARNERS}
    return {**fitted, models.ENSEMBLE: models.Voting(list(fitted.values()))}


def matrix(frame: pl.DataFrame) -> np.ndarray:
    """The model inputs of stacked rows (`horizons.stack`), in FEATURES order."""
    return frame.select(FEATURES).to_numpy().astype(np.float32, copy=False)


class StageData:
    """A stage's origin rows (features, truth per horizon) held in one polars frame: the local engine.

    The seam between validation and an engine: the walk-forward asks only for origin
    years, for rows to bring to the driver (one origin's, the latest origin's) and for
    learners fitted on a cut's training pairs, so a cluster engine can keep the rows
    where they are (see censo_forecast.distributed).
    """

    def __init__(self, frame: pl.DataFrame, horizons: int = 1):
        self.frame = frame
        self.horizons = horizons

    @property
    def height(self) -> int:
        return self.frame.height

    def origin_years(self) -> list[int]:
        return sorted(self.frame["origin_year"].unique().to_list())

    def rows(self, predicate: pl.Expr) -> pl.DataFrame:
        return self.frame.filter(predicate)

    def training_pairs(self, cut: int, settings: ModelSettings) -> pl.DataFrame:
        """The pairs a fit for origin `cut` sees (target <= cut, window, sampled to the cap)."""
        pairs = horizons_mod.pairs_in_window(self.frame, cut, settings.train_window_years, self.horizons)
        fraction = horizons_mod.sampling_fraction(pairs, settings.max_training_rows)
        return horizons_mod.training_pairs(self.frame, cut, settings.train_window_years, self.horizons, fraction)

    def fit_learners(self, cut: int, settings: ModelSettings, device: models.Device, jobs: int,
                     names: tuple[str, ...] = models.LEARNERS) -> dict:
        """The named learners fitted on the training pairs of origin `cut`; Voting as well when both are."""
        train = self.training_pairs(cut, settings)
        if train.height == 0:
            raise ValueError(f"no training pairs with a target year <= {cut}")
        X, y = matrix(train), train["y_true"].to_numpy()
        if set(names) == set(models.LEARNERS):
            return fit_learners(X, y, settings, device, jobs)
        return {name: fit_learner(name, X, y, settings, device, jobs) for name in names}


def fit_baseline(name: str, data: StageData, cut: int):
    """Persistencia; Coorte (cohort progression, computed with the features); or Deriva: the
    stage's aggregate one-year change into `cut` (the latest target year it may see), h-fold."""
    empty = np.empty((0, len(FEATURES)), dtype=np.float32)
    if name == models.COHORT:
        return models.CohortProgression(COHORT_INDEX).fit(empty)
    if name == models.DRIFT:
        latest = max((o for o in data.origin_years() if o < cut), default=None)
        rows = horizons_mod.stack(data.rows(pl.col("origin_year") == latest), [1]) if latest is not None else None
        if rows is None or rows.height == 0:
            return models.Drift(ANCHOR_INDEX, HORIZON_INDEX).fit(empty, np.empty(0))
        return models.Drift(ANCHOR_INDEX, HORIZON_INDEX).fit(matrix(rows), rows["y_true"].to_numpy())
    return models.Persistence(ANCHOR_INDEX).fit(empty)


def fit_stage_models(chosen: dict[int, str], data: StageData, cut: int, *, settings: ModelSettings,
                     device: models.Device, jobs: int) -> models.ByHorizon:
    """Each horizon's chosen model, fitted for forecasts from origin `cut` (the last census
    year): the learners once, on the pairs up to `cut`, shared by the horizons that chose them."""
    wanted = {name for name in chosen.values() if name not in models.BASELINES}
    names = models.LEARNERS if models.ENSEMBLE in wanted else tuple(n for n in models.LEARNERS if n in wanted)
    fitted = data.fit_learners(cut, settings, device, jobs, names=names) if names else {}
    for name in set(chosen.values()) & set(models.BASELINES):
        fitted[name] = fit_baseline(name, data, cut + 1)
    return models.ByHorizon({h: fitted[name] for h, name in chosen.items()}, HORIZON_INDEX)


@dataclass
class LastFold:
    """The last cut's fitted learners and its origin rows at every horizon (never trained on): what SHAP explains."""

    year: int  # the origin year
    learners: dict  # LightGBM, XGBoost, Voting
    X_test: np.ndarray


@dataclass
class StageCV:
    flag: str
    predictions: pl.DataFrame  # etapa, CO_ENTIDADE, NU_ANO_CENSO, ano_origem, horizonte, ..., y_true, one column per model
    folds: pl.DataFrame  # etapa, modelo, horizonte, NU_ANO_CENSO, MAE, RMSE, R2, WAPE, n
    seconds: float
    last_fold: LastFold | None = None  # not checkpointed


def walk_forward(data: StageData | pl.DataFrame, flag: str, census_years: list[int], *, settings: ModelSettings,
                 device: models.Device, min_train_years: int = 3, jobs: int = 2) -> StageCV:
    """Walk-forward over origin years and horizons for one stage.

    Parameters: `data` (an engine's StageData, or the stage's origin rows with truth for
    one horizon), `flag`, `census_years`; `settings` (hyper-parameters, training window,
    row cap), `device`, `min_train_years` (census years before the first test year),
    `jobs` (threads). Returns the stage's predictions and per-(horizon, test year) metrics
    for every model of MODEL_NAMES.
    """
    started = time.perf_counter()
    data = StageData(data) if isinstance(data, pl.DataFrame) else data
    preds, fold_rows, last = [], [], None
    for cut in cut_years(data.origin_years(), census_years, min_train_years):
        origin = data.rows(pl.col("origin_year") == cut)
        test = horizons_mod.stack(origin, data.horizons).sort(HORIZON, "CO_ENTIDADE")
        if test.height == 0:
            continue
        X_test = matrix(test)
        fitted = {**{name: fit_baseline(name, data, cut) for name in models.BASELINES},
                  **data.fit_learners(cut, settings, device, jobs)}
        # students in float32 (exact for counts; a national walk-forward holds tens of millions of rows)
        out = test.select(pl.lit(flag).alias("etapa"), "CO_ENTIDADE", pl.col("target_year").alias("NU_ANO_CENSO"),
                          pl.col("origin_year").alias(ORIGIN_COLUMN), pl.col(HORIZON).cast(pl.Int32).alias(HORIZON_COLUMN),
                          "CO_MUNICIPIO", "CO_UF", pl.col("y_true").cast(pl.Float32))
        out = out.with_columns(pl.Series(name, model.predict(X_test), dtype=pl.Float32) for name, model in fitted.items())
        for (h, year), rows in out.group_by(HORIZON_COLUMN, "NU_ANO_CENSO", maintain_order=True):
            y = rows["y_true"].to_numpy()
            fold_rows += [{"etapa": flag, "modelo": name, HORIZON_COLUMN: h, "NU_ANO_CENSO": year,
                           **metrics(y, rows[name].to_numpy()), "n": len(y)} for name in fitted]
        preds.append(out)
        last = (cut, {k: fitted[k] for k in (*models.LEARNERS, models.ENSEMBLE)}, origin)
        mae = {row["modelo"]: row["MAE"] for row in fold_rows if row[HORIZON_COLUMN] == 1 and row["NU_ANO_CENSO"] == cut + 1}
        mae = [mae[m] for m in (models.PERSISTENCE, models.COHORT, models.ENSEMBLE)]
        log.info("%s origin %d: %d test rows over %d horizon(s); one year ahead MAE persistence %.2f / cohort %.2f / voting %.2f",
                 flag, cut, test.height, out[HORIZON_COLUMN].n_unique(), *mae)
    if not preds:
        raise ValueError(f"{flag}: not enough years for walk-forward validation (census years {census_years}, "
                         f"min_train_years={min_train_years})")
    folds = pl.DataFrame(fold_rows).sort(HORIZON_COLUMN, "NU_ANO_CENSO", maintain_order=True)
    cut, learners, origin = last  # SHAP explains the last origin's rows at every horizon: built once, here
    last_fold = LastFold(cut, learners, matrix(horizons_mod.stack(origin, data.horizons, truth=False)))
    return StageCV(flag, pl.concat(preds), folds, time.perf_counter() - started, last_fold)


def by_horizon(frame: pl.DataFrame):
    """(horizon, rows) of a predictions frame, in horizon order."""
    for h in sorted(frame[HORIZON_COLUMN].unique().to_list()):
        yield h, frame.filter(pl.col(HORIZON_COLUMN) == h)


def totals_error(predictions: pl.DataFrame, model: str) -> dict[str, float]:
    """Mean absolute percentage error of municipal and state totals over the test years
    (the rows of one horizon)."""
    out = {}
    for key, label in (("CO_MUNICIPIO", "APE_Municipios_Media_CV"), ("CO_UF", "APE_UFs_Media_CV")):
        sums = (predictions.group_by(key, "NU_ANO_CENSO").agg(pl.col("y_true").sum(), pl.col(model).sum())
                .filter(pl.col("y_true") > 0).sort(key, "NU_ANO_CENSO"))  # sorted: a reproducible float sum
        out[label] = float(((sums[model] - sums["y_true"]).abs() / sums["y_true"]).mean()) if sums.height else None
    return out


def coverage_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Interval coverage per stage, model, horizon and test year, each test year Y at horizon h
    calibrated only on the residuals known at its origin (target years <= Y - h)."""
    frames = [
        intervals.coverage_by_year(rows, model, h).with_columns(pl.lit(flag).alias("etapa"), pl.lit(h).alias(HORIZON_COLUMN))
        for flag in predictions["etapa"].unique(maintain_order=True)
        for h, rows in by_horizon(predictions.filter(pl.col("etapa") == flag))
        for model in models.MODEL_NAMES
    ]
    schema = {"etapa": pl.String, "modelo": pl.String, HORIZON_COLUMN: pl.Int32, "NU_ANO_CENSO": pl.Int64,
              "Cobertura_80": pl.Float64, "Cobertura_95": pl.Float64, "n": pl.Int64}
    frames = [f.select(list(schema)).cast(schema) for f in frames if f.height]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def interval_and_totals_table(predictions: pl.DataFrame, coverage: pl.DataFrame) -> pl.DataFrame:
    """Per (etapa, modelo, horizonte): mean interval coverage over test years and the error
    of municipal and state totals."""
    totals = pl.DataFrame(
        [{"etapa": flag, "modelo": model, HORIZON_COLUMN: h, **totals_error(rows, model)}
         for flag in predictions["etapa"].unique(maintain_order=True)
         for h, rows in by_horizon(predictions.filter(pl.col("etapa") == flag)) for model in models.MODEL_NAMES],
        schema={"etapa": pl.String, "modelo": pl.String, HORIZON_COLUMN: pl.Int32,
                "APE_Municipios_Media_CV": pl.Float64, "APE_UFs_Media_CV": pl.Float64},
    )
    means = coverage.group_by("etapa", "modelo", HORIZON_COLUMN).agg(
        pl.col("Cobertura_80").mean().alias("Cobertura_80_CV"), pl.col("Cobertura_95").mean().alias("Cobertura_95_CV"))
    return totals.join(means, on=["etapa", "modelo", HORIZON_COLUMN], how="left")


SEED_COLUMNS = ["etapa", "modelo", "R2_Media_CV", "RMSE_Media_CV", "MAE_Media_CV", "WAPE_Media_CV",
                "Skill_MAE_vs_Persistencia"]


def summarize(folds: pl.DataFrame, intervals_and_totals: pl.DataFrame | None = None) -> pl.DataFrame:
    """resultados_finais.csv: one row per (etapa, modelo, horizonte), means over test years,
    skill vs persistence and vs cohort progression; the seed's columns first. With the
    predictions' `interval_and_totals_table` (computed stage by stage), also interval
    coverage and the error of municipal and state totals."""
    keys = ["etapa", "modelo", HORIZON_COLUMN]
    table = folds.group_by(keys, maintain_order=True).agg(
        pl.col("R2").mean().alias("R2_Media_CV"),
        pl.col("RMSE").mean().alias("RMSE_Media_CV"),
        pl.col("MAE").mean().alias("MAE_Media_CV"),
        pl.col("WAPE").mean().alias("WAPE_Media_CV"),
        pl.len().alias("n_folds"),
        pl.col("n").sum().alias("n_amostras"),
    )
    for baseline, column in ((models.PERSISTENCE, "Skill_MAE_vs_Persistencia"), (models.COHORT, "Skill_MAE_vs_Coorte")):
        reference = table.filter(pl.col("modelo") == baseline).select("etapa", HORIZON_COLUMN, pl.col("MAE_Media_CV").alias("_mae_b"))
        table = table.join(reference, on=["etapa", HORIZON_COLUMN], how="left").with_columns(
            (1 - pl.col("MAE_Media_CV") / pl.col("_mae_b")).alias(column)).drop("_mae_b")
    best = table.group_by("etapa", HORIZON_COLUMN).agg(pl.col("modelo").sort_by("MAE_Media_CV").first().alias("_best"))
    table = table.join(best, on=["etapa", HORIZON_COLUMN]).with_columns((pl.col("modelo") == pl.col("_best")).alias("Escolhido"))
    columns = [*SEED_COLUMNS, HORIZON_COLUMN, "Skill_MAE_vs_Coorte", "n_folds", "n_amostras"]
    if intervals_and_totals is not None:
        table = table.join(intervals_and_totals, on=keys, how="left")
        columns += ["Cobertura_80_CV", "Cobertura_95_CV", "APE_Municipios_Media_CV", "APE_UFs_Media_CV"]
    return table.sort(HORIZON_COLUMN, maintain_order=True).select(*columns, "Escolhido")


def error_by_size(predictions: pl.DataFrame) -> pl.DataFrame:
    """MAE per stage, model, horizon and school-size bin (intervals' bins of the origin year's enrollment)."""
    names = [m for m in models.MODEL_NAMES if m in predictions.columns]
    binned = predictions.select("etapa", HORIZON_COLUMN, "y_true", *names,
                                pl.Series("faixa", intervals.cv_size_bins(predictions), dtype=pl.Int8))
    wide = binned.group_by("etapa", HORIZON_COLUMN, "faixa").agg(
        *((pl.col(m) - pl.col("y_true")).abs().mean().alias(m) for m in names), pl.len().cast(pl.Int64).alias("n"))
    table = wide.unpivot(index=["etapa", HORIZON_COLUMN, "faixa", "n"], on=names, variable_name="modelo", value_name="MAE")
    table = table.with_columns(pl.col("faixa").replace_strict(dict(enumerate(intervals.size_labels())),
                                                              return_dtype=pl.String).alias("faixa_tamanho"))
    order = pl.col("modelo").replace_strict({m: i for i, m in enumerate(models.MODEL_NAMES)}, return_dtype=pl.Int8)
    return (table.sort("etapa", HORIZON_COLUMN, order, "faixa")
            .select("etapa", "modelo", HORIZON_COLUMN, "faixa", "faixa_tamanho", "n", pl.col("MAE").cast(pl.Float64)))


def totals_by_year(predictions: pl.DataFrame) -> pl.DataFrame:
    """Actual and forecast stage totals per horizon, test year and model (sums of the school rows)."""
    names = [m for m in models.MODEL_NAMES if m in predictions.columns]
    index = ["etapa", HORIZON_COLUMN, "NU_ANO_CENSO"]
    wide = predictions.group_by(index).agg(pl.col("y_true", *names).sum())
    return (wide.unpivot(index=[*index, "y_true"], on=names, variable_name="modelo", value_name="previsao")
            .rename({"y_true": "real"}).sort(index, maintain_order=True)
            .select("etapa", "modelo", HORIZON_COLUMN, "NU_ANO_CENSO", "real", "previsao"))


def chosen_models(summary: pl.DataFrame) -> dict[str, dict[int, str]]:
    """Per stage and horizon, the model with the best CV MAE, baselines included: never
    worse than persistence or cohort progression at any horizon."""
    chosen: dict[str, dict[int, str]] = {}
    for flag, h, name in summary.filter(pl.col("Escolhido")).select("etapa", HORIZON_COLUMN, "modelo").iter_rows():
        chosen.setdefault(flag, {})[int(h)] = name
    return chosen
