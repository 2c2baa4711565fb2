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

from censo_forecast import features, models, validation
from censo_forecast.config import ModelSettings
from censo_forecast.inep import catalog
from censo_forecast.panel import SCHOOL, YEAR, build_panel

log = logging.getLogger(__name__)


@dataclass
class CVResult:
    summary: pl.DataFrame  # resultados_finais
    predictions: pl.DataFrame  # cv_predictions
    folds: pl.DataFrame  # per test year metrics


class EnrollmentForecaster:
    """Per-stage forecaster following scikit-learn's conventions (fitted state ends in `_`)."""

    def __init__(self, stages: list[str] | None = None, model: ModelSettings | None = None, device: str = "auto",
                 min_train_years: int = 3, n_jobs: int = 2):
        self.stages = stages
        self.model = model
        self.device = device
        self.min_train_years = min_train_years
        self.n_jobs = n_jobs

    # ----------------------------------------------------------- helpers
    @property
    def _stages(self) -> list[str]:
        return list(self.stages) if self.stages else [s.flag for s in catalog.STAGES]

    def resolve_device(self) -> models.Device:
        if not hasattr(self, "device_"):
            self.device_ = models.select_device(self.device)
            log.info("device: %s (%s)", self.device_.name, self.device_.reason)
        return self.device_

    @staticmethod
    def panel(census: pl.DataFrame) -> pl.DataFrame:
        return census if "active" in census.columns else build_panel(census)

    def stage_data(self, panel: pl.DataFrame, flag: str) -> pl.DataFrame:
        return features.with_truth(features.origin_features(panel, flag), panel, flag)

    # ----------------------------------------------------------- validation
    def cross_validate_stage(self, panel: pl.DataFrame, flag: str) -> validation.StageCV:
        years = sorted(panel[YEAR].unique().to_list())
        return validation.walk_forward(self.stage_data(panel, flag), flag, years, self.model or ModelSettings(),
                                       self.resolve_device(), self.min_train_years, self.n_jobs)

    def cross_validate(self, census: pl.DataFrame) -> CVResult:
        panel = self.panel(census)
        results = [self.cross_validate_stage(panel, flag) for flag in self._stages]
        folds = pl.concat([r.folds for r in results])
        self.cv_ = CVResult(validation.summarize(folds), pl.concat([r.predictions for r in results], how="diagonal"), folds)
        return self.cv_

    # ----------------------------------------------------------- fit / predict
    def fit(self, census: pl.DataFrame) -> "EnrollmentForecaster":
        """Refit each stage's chosen model (best CV MAE; Voting if not validated) on every year."""
        panel = self.panel(census)
        chosen = validation.chosen_models(self.cv_.summary) if hasattr(self, "cv_") else {}
        self.models_, self.chosen_ = {}, {}
        for flag in self._stages:
            data = self.stage_data(panel, flag)
            if data.height == 0:
                log.warning("%s: no school offers this stage; nothing to fit", flag)
                continue
            name = chosen.get(flag, models.ENSEMBLE)
            X, y = validation.matrix(data), data["y_true"].to_numpy()
            if name in models.LEARNERS or name == models.ENSEMBLE:
                model = validation.fit_learners(X, y, self.model or ModelSettings(), self.resolve_device(), self.n_jobs)[name]
            elif name == "Deriva":
                latest = data.filter(pl.col("target_year") == data["target_year"].max())
                model = models.Drift(validation.ANCHOR_INDEX).fit(validation.matrix(latest), latest["y_true"].to_numpy())
            else:
                model = models.Persistence(validation.ANCHOR_INDEX).fit(X, y)
            self.models_[flag], self.chosen_[flag] = model, name
            self.last_year_ = int(panel[YEAR].max())
        return self

    def predict(self, census: pl.DataFrame) -> pl.DataFrame:
        """Forecast for the year after the last census year, per school offering each stage then."""
        panel = self.panel(census)
        last = int(panel[YEAR].max())
        frames = []
        for flag, model in self.models_.items():
            rows = features.origin_features(panel, flag).filter(pl.col("origin_year") == last)
            if rows.height == 0:
                continue
            pred = model.predict(validation.matrix(rows))
            frames.append(rows.select(
                SCHOOL, "CO_MUNICIPIO", "CO_UF", pl.lit(flag).alias("etapa"), pl.lit(self.chosen_[flag]).alias("modelo"),
                pl.col("target_year").alias(YEAR), pl.col(features.ANCHOR).alias("matriculas_ultimo_ano"),
            ).with_columns(pl.Series("previsao", np.asarray(pred, dtype=np.float64))))
        return pl.concat(frames) if frames else pl.DataFrame()
