"""The user-facing Python API: validate, fit and forecast enrollment per school and stage.

    from censo_forecast import EnrollmentForecaster, load_census
    census = load_census("data/cache")                 # the ingested years
    fc = EnrollmentForecaster(stages=["IN_MED"])
    fc.cross_validate(census)                           # walk-forward table (resultados_finais)
    fc.fit(census).predict(census)                      # next year's forecast per school
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from censo_forecast import features, forecast, intervals, models, validation
from censo_forecast.config import ModelSettings
from censo_forecast.inep import catalog
from censo_forecast.panel import SCHOOL, YEAR, build_panel

log = logging.getLogger(__name__)


@dataclass
class CVResult:
    summary: pl.DataFrame  # resultados_finais
    predictions: pl.DataFrame  # cv_predictions
    folds: pl.DataFrame  # per test year metrics
    coverage: pl.DataFrame  # interval coverage per stage, model and test year


class EnrollmentForecaster:
    """Per-stage forecaster following scikit-learn's conventions (fitted state ends in `_`)."""

    def __init__(self, stages: list[str] | None = None, model: ModelSettings | None = None, device: str = "auto",
                 min_train_years: int = 3, n_jobs: int = 2, engine=None):
        self.stages = stages
        self.model = model
        self.device = device
        self.min_train_years = min_train_years
        self.n_jobs = n_jobs
        self.engine = engine  # None: this machine; or e.g. censo_forecast.distributed.dask.DaskEngine

    # ----------------------------------------------------------- helpers
    @property
    def _stages(self) -> list[str]:
        return list(self.stages) if self.stages else [s.flag for s in catalog.STAGES]

    def resolve_device(self) -> models.Device:
        if not hasattr(self, "device_"):
            select = self.engine.select_device if self.engine is not None else models.select_device
            self.device_ = select(self.device)
            log.info("device: %s (%s)", self.device_.name, self.device_.reason)
        return self.device_

    @staticmethod
    def panel(census: pl.DataFrame) -> pl.DataFrame:
        return census if "active" in census.columns else build_panel(census)

    def stage_data(self, panel: pl.DataFrame, flag: str) -> validation.StageData:
        """A stage's feature rows with their truth, where the engine keeps them."""
        if self.engine is not None:
            return self.engine.stage_data(panel, flag)
        return validation.StageData(features.training_frame(panel, flag))

    # ----------------------------------------------------------- validation
    def cross_validate_stage(self, panel: pl.DataFrame, flag: str, data: validation.StageData | None = None) -> validation.StageCV:
        years = sorted(panel[YEAR].unique().to_list())
        data = data if data is not None else self.stage_data(panel, flag)
        return validation.walk_forward(data, flag, years, self.model or ModelSettings(),
                                       self.resolve_device(), self.min_train_years, self.n_jobs)

    def cross_validate(self, census: pl.DataFrame) -> CVResult:
        panel = self.panel(census)
        results = [self.cross_validate_stage(panel, flag) for flag in self._stages]
        self.cv_ = self.combine(results)
        return self.cv_

    @staticmethod
    def combine(results: list[validation.StageCV]) -> CVResult:
        folds = pl.concat([r.folds for r in results])
        predictions = pl.concat([r.predictions for r in results], how="diagonal")
        coverage = validation.coverage_table(predictions)
        return CVResult(validation.summarize(folds, predictions, coverage), predictions, folds, coverage)

    # ----------------------------------------------------------- fit / predict
    def fit(self, census: pl.DataFrame) -> "EnrollmentForecaster":
        """Refit each stage's chosen model (best CV MAE; Voting if not validated) on the latest years."""
        panel = self.panel(census)
        self.models_, self.chosen_, self.calibration_ = {}, {}, {}
        for flag in self._stages:
            stage_cv = None
            if hasattr(self, "cv_"):
                stage_cv = validation.StageCV(flag, self.cv_.predictions.filter(pl.col("etapa") == flag),
                                              self.cv_.folds.filter(pl.col("etapa") == flag), 0.0)
            self.fit_stage(panel, flag, stage_cv)
        return self

    def fit_stage(self, panel: pl.DataFrame, flag: str, stage_cv: validation.StageCV | None = None,
                  data: validation.StageData | None = None) -> "EnrollmentForecaster":
        """Refit one stage's chosen model on the latest years (the training window), reusing `data`
        when the caller has it."""
        for attr in ("models_", "chosen_", "calibration_"):
            if not hasattr(self, attr):
                setattr(self, attr, {})
        self.training_years_ = sorted(panel[YEAR].unique().to_list())
        data = data if data is not None else self.stage_data(panel, flag)
        if data.height == 0:
            log.warning("%s: no school offers this stage; nothing to fit", flag)
            return self
        validated = stage_cv is not None and stage_cv.folds.height > 0
        name = validation.chosen_models(validation.summarize(stage_cv.folds))[flag] if validated else models.ENSEMBLE
        model = validation.fit_model(name, data, self.model or ModelSettings(), self.resolve_device(), self.n_jobs)
        self.models_[flag], self.chosen_[flag] = model, name
        if validated:
            self.calibration_[flag] = intervals.calibration_table(stage_cv.predictions, name)
        return self

    def predict(self, census: pl.DataFrame) -> pl.DataFrame:
        """Forecast for the year after the last census year, per school offering each stage
        then; with 80% and 95% conformal intervals when the models were validated."""
        panel = self.panel(census)
        last = int(panel[YEAR].max())
        names = panel.filter(pl.col(YEAR) == last).select(SCHOOL, "NO_ENTIDADE")
        frames = []
        for flag, model in self.models_.items():
            rows = features.origin_features(panel, flag).filter(pl.col("origin_year") == last)
            if rows.height == 0:
                continue
            pred = np.asarray(model.predict(validation.matrix(rows)), dtype=np.float64)
            last_year = rows[features.ANCHOR].to_numpy().astype(np.float64)
            frame = rows.select(SCHOOL, "CO_MUNICIPIO", "CO_UF", pl.lit(flag).alias("etapa"),
                                pl.lit(self.chosen_[flag]).alias("modelo"), pl.col(features.ANCHOR).cast(pl.Float64).alias("matriculas_ultimo_ano"))
            frame = frame.with_columns(pl.Series("previsao", pred))
            calibration = getattr(self, "calibration_", {}).get(flag)
            if calibration is not None:
                frame = frame.with_columns(pl.Series(k, v) for k, v in intervals.bounds(pred, last_year, calibration).items())
            frames.append(frame.join(names, on=SCHOOL, how="left"))
        self.forecast_year_ = last + 1
        return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()

    def aggregate(self, census: pl.DataFrame, schools: pl.DataFrame, seed: int = 0) -> dict[str, pl.DataFrame]:
        """Municipal, state and national sums (with new offerings) per stage, with intervals."""
        panel = self.panel(census)
        parts: dict[str, list[pl.DataFrame]] = {"municipios": [], "ufs": [], "brasil": []}
        for flag in schools["etapa"].unique(maintain_order=True):
            if flag not in getattr(self, "calibration_", {}):
                raise ValueError(f"{flag}: totals need calibrated residuals; call cross_validate() before fit()")
            areas = forecast.aggregate(schools.filter(pl.col("etapa") == flag), self.calibration_[flag],
                                       forecast.new_offerings(panel, flag), flag, seed=seed)
            for key, frame in areas.items():
                parts[key].append(frame)
        return {k: pl.concat(v, how="diagonal") for k, v in parts.items() if v}
