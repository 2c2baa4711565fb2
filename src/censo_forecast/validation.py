"""Walk-forward validation by calendar year against the persistence baseline.

For test year T the models are trained on target years < T only (features of those rows
come from years < T-1), so nothing from year T is seen before it is predicted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from censo_forecast import intervals, models
from censo_forecast.config import ModelSettings
from censo_forecast.features import ANCHOR, COHORT_FEATURE, FEATURES

log = logging.getLogger(__name__)
ANCHOR_INDEX = FEATURES.index(ANCHOR)
COHORT_INDEX = FEATURES.index(COHORT_FEATURE)


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


def test_years(target_years: list[int], census_years: list[int], min_train_years: int) -> list[int]:
    """From the (min_train_years+1)-th census year to the last; each needs earlier training rows."""
    first = sorted(census_years)[min_train_years] if len(census_years) > min_train_years else None
    if first is None:
        return []
    return [t for t in sorted(target_years) if t >= first and any(y < t for y in target_years)]


def fit_learner(name: str, X: np.ndarray, y: np.ndarray, settings: ModelSettings, device: models.Device, jobs: int):
    """One boosted model ("LightGBM" or "XGBoost") on the given device."""
    return models.ChangeRegressor(name, ANCHOR_INDEX, settings, device.of(name), jobs).fit(X, y)


def fit_learners(X: np.ndarray, y: np.ndarray, settings: ModelSettings, device: models.Device, jobs: int) -> dict:
    """The two boosted models and their Voting mean, fitted on the same rows."""
    fitted = {name: fit_learner(name, X, y, settings, device, jobs) for name in models.LEARNERS}
    return {**fitted, models.ENSEMBLE: models.Voting(list(fitted.values()))}


def matrix(frame: pl.DataFrame) -> np.ndarray:
    return frame.select(FEATURES).to_numpy().astype(np.float32, copy=False)


def training_rows(target_years: list[int], test_year: int | None, window: int) -> pl.Expr:
    """Rows to train on for test year `test_year` (None: the refit after the last year):
    target years before it, only the last `window` of them when window > 0."""
    end = test_year if test_year is not None else max(target_years) + 1
    rows = pl.col("target_year") < end
    return rows & (pl.col("target_year") >= end - window) if window > 0 else rows


class StageData:
    """A stage's feature rows (features and y_true) held in one polars frame: the local engine.

    The seam between validation and an engine: the walk-forward asks only for target
    years, for rows to bring to the driver (a test year, the latest training year) and
    for learners fitted on the training rows, so a cluster engine can keep the rows where
    they are (see censo_forecast.distributed).
    """

    def __init__(self, frame: pl.DataFrame):
        self.frame = frame

    @property
    def height(self) -> int:
        return self.frame.height

    def target_years(self) -> list[int]:
        return sorted(self.frame["target_year"].unique().to_list())

    def rows(self, predicate: pl.Expr) -> pl.DataFrame:
        return self.frame.filter(predicate)

    def fit_learners(self, test_year: int | None, settings: ModelSettings, device: models.Device, jobs: int,
                     names: tuple[str, ...] = models.LEARNERS) -> dict:
        """The named learners fitted on the training rows for test_year; Voting as well when both are."""
        train = self.rows(training_rows(self.target_years(), test_year, settings.train_window_years))
        X, y = matrix(train), train["y_true"].to_numpy()
        if set(names) == set(models.LEARNERS):
            return fit_learners(X, y, settings, device, jobs)
        return {name: fit_learner(name, X, y, settings, device, jobs) for name in names}


def fit_baseline(name: str, data: StageData, test_year: int | None = None):
    """Persistencia; Coorte (cohort progression, computed with the features); or Deriva: the
    stage's aggregate change in the latest target year before test_year."""
    if name == models.COHORT:
        return models.CohortProgression(COHORT_INDEX).fit(np.empty((0, len(FEATURES)), dtype=np.float32))
    if name == models.DRIFT:
        latest = max(y for y in data.target_years() if test_year is None or y < test_year)
        rows = data.rows(pl.col("target_year") == latest)
        return models.Drift(ANCHOR_INDEX).fit(matrix(rows), rows["y_true"].to_numpy())
    return models.Persistence(ANCHOR_INDEX).fit(np.empty((0, len(FEATURES)), dtype=np.float32))


def fit_model(name: str, data: StageData, *, settings: ModelSettings, device: models.Device, jobs: int):
    """Any model of the results table, fitted on the stage's latest rows (the training window)."""
    if name in models.BASELINES:
        return fit_baseline(name, data)
    if name == models.ENSEMBLE:
        return data.fit_learners(None, settings, device, jobs)[name]
    return data.fit_learners(None, settings, device, jobs, names=(name,))[name]


@dataclass
class LastFold:
    """The last test year's fitted learners and its held-out rows: what SHAP explains."""

    year: int
    learners: dict  # LightGBM, XGBoost, Voting
    X_test: np.ndarray


@dataclass
class StageCV:
    flag: str
    predictions: pl.DataFrame  # etapa, CO_ENTIDADE, NU_ANO_CENSO, y_true, one column per model
    folds: pl.DataFrame  # etapa, modelo, NU_ANO_CENSO, MAE, RMSE, R2, WAPE, n
    seconds: float
    last_fold: LastFold | None = None  # not checkpointed


def walk_forward(data: StageData | pl.DataFrame, flag: str, census_years: list[int], *, settings: ModelSettings,
                 device: models.Device, min_train_years: int = 3, jobs: int = 2) -> StageCV:
    """Walk-forward over calendar years for one stage.

    Parameters: `data` (the stage's rows with truth, or an engine's StageData), `flag`,
    `census_years`; `settings` (hyper-parameters and training window), `device`,
    `min_train_years` (census years before the first test year), `jobs` (threads).
    Returns the stage's predictions and per-year metrics for every model of MODEL_NAMES.
    """
    started = time.perf_counter()
    data = StageData(data) if isinstance(data, pl.DataFrame) else data
    preds, fold_rows = [], []
    for year in test_years(data.target_years(), census_years, min_train_years):
        test = data.rows(pl.col("target_year") == year).sort("CO_ENTIDADE")
        X_test = matrix(test)
        fitted = {
            **{name: fit_baseline(name, data, year) for name in models.BASELINES},
            **data.fit_learners(year, settings, device, jobs),
        }
        out = test.select(pl.lit(flag).alias("etapa"), "CO_ENTIDADE", pl.col("target_year").alias("NU_ANO_CENSO"),
                          "CO_MUNICIPIO", "CO_UF", "y_true")
        y_test = test["y_true"].to_numpy()
        for name, model in fitted.items():
            pred = model.predict(X_test)
            out = out.with_columns(pl.Series(name, pred, dtype=pl.Float64))
            fold_rows.append({"etapa": flag, "modelo": name, "NU_ANO_CENSO": year, **metrics(y_test, pred), "n": len(y_test)})
        preds.append(out)
        last_fold = LastFold(year, {k: fitted[k] for k in (*models.LEARNERS, models.ENSEMBLE)}, X_test)
        mae = {row["modelo"]: row["MAE"] for row in fold_rows[-len(fitted):]}
        log.info("%s %d: test %d rows, MAE persistence %.2f / cohort %.2f / voting %.2f", flag, year, test.height,
                 mae[models.PERSISTENCE], mae[models.COHORT], mae[models.ENSEMBLE])
    if not preds:
        raise ValueError(f"{flag}: not enough years for walk-forward validation (census years {census_years}, "
                         f"min_train_years={min_train_years})")
    return StageCV(flag, pl.concat(preds), pl.DataFrame(fold_rows), time.perf_counter() - started, last_fold)


def totals_error(predictions: pl.DataFrame, model: str) -> dict[str, float]:
    """Mean absolute percentage error of municipal and state totals over the test years."""
    out = {}
    for key, label in (("CO_MUNICIPIO", "APE_Municipios_Media_CV"), ("CO_UF", "APE_UFs_Media_CV")):
        sums = (predictions.group_by(key, "NU_ANO_CENSO").agg(pl.col("y_true").sum(), pl.col(model).sum())
                .filter(pl.col("y_true") > 0).sort(key, "NU_ANO_CENSO"))  # sorted: a reproducible float sum
        out[label] = float(((sums[model] - sums["y_true"]).abs() / sums["y_true"]).mean()) if sums.height else None
    return out


def coverage_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Interval coverage per stage, model and test year, each year calibrated on earlier ones only."""
    frames = [
        intervals.coverage_by_year(predictions.filter(pl.col("etapa") == flag), model).with_columns(pl.lit(flag).alias("etapa"))
        for flag in predictions["etapa"].unique(maintain_order=True)
        for model in models.MODEL_NAMES
    ]
    schema = {"etapa": pl.String, "modelo": pl.String, "NU_ANO_CENSO": pl.Int64, "Cobertura_80": pl.Float64,
              "Cobertura_95": pl.Float64, "n": pl.Int64}
    frames = [f.select(list(schema)).cast(schema) for f in frames if f.height]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def interval_and_totals_table(predictions: pl.DataFrame, coverage: pl.DataFrame) -> pl.DataFrame:
    """Per (etapa, modelo): mean interval coverage over test years and the error of
    municipal and state totals."""
    totals = pl.DataFrame(
        [{"etapa": flag, "modelo": model, **totals_error(predictions.filter(pl.col("etapa") == flag), model)}
         for flag in predictions["etapa"].unique(maintain_order=True) for model in models.MODEL_NAMES],
        schema={"etapa": pl.String, "modelo": pl.String, "APE_Municipios_Media_CV": pl.Float64, "APE_UFs_Media_CV": pl.Float64},
    )
    means = coverage.group_by("etapa", "modelo").agg(
        pl.col("Cobertura_80").mean().alias("Cobertura_80_CV"), pl.col("Cobertura_95").mean().alias("Cobertura_95_CV"))
    return totals.join(means, on=["etapa", "modelo"], how="left")


def summarize(folds: pl.DataFrame, predictions: pl.DataFrame | None = None, coverage: pl.DataFrame | None = None) -> pl.DataFrame:
    """resultados_finais.csv: one row per (etapa, modelo), means over folds, skill vs persistence;
    with the predictions, also interval coverage and the error of municipal and state totals."""
    table = folds.group_by("etapa", "modelo", maintain_order=True).agg(
        pl.col("R2").mean().alias("R2_Media_CV"),
        pl.col("RMSE").mean().alias("RMSE_Media_CV"),
        pl.col("MAE").mean().alias("MAE_Media_CV"),
        pl.col("WAPE").mean().alias("WAPE_Media_CV"),
        pl.len().alias("n_folds"),
        pl.col("n").sum().alias("n_amostras"),
    )
    for baseline, column in ((models.PERSISTENCE, "Skill_MAE_vs_Persistencia"), (models.COHORT, "Skill_MAE_vs_Coorte")):
        reference = table.filter(pl.col("modelo") == baseline).select("etapa", pl.col("MAE_Media_CV").alias("_mae_b"))
        table = table.join(reference, on="etapa", how="left").with_columns(
            (1 - pl.col("MAE_Media_CV") / pl.col("_mae_b")).alias(column)).drop("_mae_b")
    best = table.group_by("etapa").agg(pl.col("modelo").sort_by("MAE_Media_CV").first().alias("_best"))
    table = table.join(best, on="etapa").with_columns((pl.col("modelo") == pl.col("_best")).alias("Escolhido"))
    columns = ["etapa", "modelo", "R2_Media_CV", "RMSE_Media_CV", "MAE_Media_CV", "WAPE_Media_CV",
               "Skill_MAE_vs_Persistencia", "Skill_MAE_vs_Coorte", "n_folds", "n_amostras"]
    if predictions is not None:
        if coverage is None:
            coverage = coverage_table(predictions)
        table = table.join(interval_and_totals_table(predictions, coverage), on=["etapa", "modelo"], how="left")
        columns += ["Cobertura_80_CV", "Cobertura_95_CV", "APE_Municipios_Media_CV", "APE_UFs_Media_CV"]
    return table.select(*columns, "Escolhido")


def error_by_size(predictions: pl.DataFrame) -> pl.DataFrame:
    """MAE per stage, model and school-size bin (intervals' bins of last year's enrollment)."""
    binned = predictions.with_columns(pl.Series("faixa", intervals.cv_size_bins(predictions), dtype=pl.Int8))
    frames = [
        binned.group_by("etapa", "faixa").agg(pl.lit(model).alias("modelo"),
                                              (pl.col(model) - pl.col("y_true")).abs().mean().alias("MAE"),
                                              pl.len().cast(pl.Int64).alias("n"))
        for model in models.MODEL_NAMES if model in predictions.columns
    ]
    table = pl.concat(frames).with_columns(pl.col("faixa").replace_strict(dict(enumerate(intervals.size_labels())),
                                                                            return_dtype=pl.String).alias("faixa_tamanho"))
    order = pl.col("modelo").replace_strict({m: i for i, m in enumerate(models.MODEL_NAMES)}, return_dtype=pl.Int8)
    return table.sort("etapa", order, "faixa").select("etapa", "modelo", "faixa", "faixa_tamanho", "n", "MAE")


def totals_by_year(predictions: pl.DataFrame) -> pl.DataFrame:
    """Actual and forecast stage totals per test year and model (sums of the school rows)."""
    names = [m for m in models.MODEL_NAMES if m in predictions.columns]
    wide = predictions.group_by("etapa", "NU_ANO_CENSO").agg(pl.col("y_true", *names).sum())
    return (wide.unpivot(index=["etapa", "NU_ANO_CENSO", "y_true"], on=names, variable_name="modelo", value_name="previsao")
            .rename({"y_true": "real"}).sort("etapa", "NU_ANO_CENSO", maintain_order=True)
            .select("etapa", "modelo", "NU_ANO_CENSO", "real", "previsao"))


def chosen_models(summary: pl.DataFrame) -> dict[str, str]:
    """The model with the best CV MAE per stage, baselines included: never worse than persistence."""
    return dict(summary.filter(pl.col("Escolhido")).select("etapa", "modelo").iter_rows())
