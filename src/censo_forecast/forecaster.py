"""The user-facing Python API: validate, fit and forecast enrollment per school and stage.

    from censo_forecast import EnrollmentForecaster, load_census
    census = load_census("data/cache")                 # the ingested years
    fc = EnrollmentForecaster(stages=["IN_MED"])
    fc.cross_validate(census)                           # walk-forward table (resultados_finais)
    fc.fit(census).predict(census)                      # the next five years per school
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from censo_forecast import features, forecast, horizons, intervals, models, modelstore, validation
from censo_forecast.config import ModelSettings
from censo_forecast.engine import Engine, LocalEngine
from censo_forecast.inep import catalog
from censo_forecast.outputs import FORECAST, LAST_ENROLLMENT
from censo_forecast.panel import SCHOOL, YEAR, build_panel
from censo_forecast.validation import HORIZON_COLUMN

log = logging.getLogger(__name__)


@dataclass
class CVResult:
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


class EnrollmentForecaster(BaseEstimator):
    """Per-stage forecaster with scikit-learn's conventions: parameters stored as given,
    `fit` returns self, fitted state ends in `_`.

    Parameters
    ----------
    stages : offer flags of the stages to model (default: all ten, `catalog.STAGES`).
    horizons : forecast years after the last census year (T+1 .. T+horizons), each validated.
    model : boosting hyper-parameters and training window (`ModelSettings()` by default).
    device : "auto", "cpu" or "cuda" (see `models.select_device`).
    min_train_years : census years before the first test year of the walk-forward.
    n_jobs : threads per model.
    engine : where features and training run (`engine.LocalEngine()` by default; a
        cluster engine from `engine.open_engine`).

    Fitted state: `stage_cv_` (walk-forward results per stage), `cv_` (all stages
    combined), `models_` (per stage a `models.ByHorizon`), `chosen_` (per stage and
    horizon), `calibration_` (per stage, with a `horizonte` column), `training_years_`,
    `forecast_years_` (after `predict`).
    """

    def __init__(self, stages: list[str] | None = None, *, horizons: int = 5, model: ModelSettings | None = None,
                 device: str = "auto", min_train_years: int = 3, n_jobs: int = 2, engine: Engine | None = None):
        self.stages = stages
        self.horizons = horizons
        self.model = model
        self.device = device
        self.min_train_years = min_train_years
        self.n_jobs = n_jobs
        self.engine = engine

    # ----------------------------------------------------------- helpers
    @property
    def _stages(self) -> list[str]:
        return list(self.stages) if self.stages else [s.flag for s in catalog.STAGES]

    @property
    def _engine(self) -> Engine:
        return self.engine if self.engine is not None else LocalEngine()

    @property
    def _settings(self) -> ModelSettings:
        return self.model or ModelSettings()

    def resolve_device(self) -> models.Device:
        """The device the learners train on (decided once, by the engine)."""
        if not hasattr(self, "device_"):
            self.device_ = self._engine.select_device(self.device)
            log.info("device: %s (%s)", self.device_.name, self.device_.reason)
        return self.device_

    @staticmethod
    def panel(census: pl.DataFrame) -> pl.DataFrame:
        """The (school, year) panel of a census frame (a panel is returned as it is)."""
        return census if "active" in census.columns else build_panel(census)

    def stage_data(self, panel: pl.DataFrame, flag: str) -> validation.StageData:
        """A stage's feature rows with their truth, where the engine keeps them."""
        return self._engine.stage_data(panel, flag, self.horizons)

    # ----------------------------------------------------------- validation
    def cross_validate_stage(self, panel: pl.DataFrame, flag: str, *,
                             data: validation.StageData | None = None) -> validation.StageCV:
        """Walk-forward validation of one stage; recorded in `stage_cv_`.

        `data`: the stage's rows when the caller already has them (they are reused by
        `fit_stage`). Raises ValueError when the census has too few years.
        """
        years = sorted(panel[YEAR].unique().to_list())
        data = data if data is not None else self.stage_data(panel, flag)
        cv = validation.walk_forward(data, flag, years, settings=self._settings, device=self.resolve_device(),
                                     min_train_years=self.min_train_years, jobs=self.n_jobs)
        return self.record_cv(cv)

    def record_cv(self, cv: validation.StageCV) -> validation.StageCV:
        """Adopt a stage's walk-forward result computed earlier (a resumed checkpoint)."""
        if not hasattr(self, "stage_cv_"):
            self.stage_cv_ = {}
        self.stage_cv_[cv.flag] = cv
        return cv

    def cross_validate(self, census: pl.DataFrame) -> CVResult:
        """Walk-forward validation of every stage.

        Parameters: `census`, the ingested years (`load_census`) or their panel.
        Returns the `CVResult` (also `cv_`): `summary` is `resultados_finais.csv`.
        """
        panel = self.panel(census)
        for flag in self._stages:
            self.cross_validate_stage(panel, flag)
        return self.cv_

    @property
    def cv_(self) -> CVResult:
        """Every validated stage's results, combined."""
        check_is_fitted(self, "stage_cv_")
        return combine(list(self.stage_cv_.values()))

    # ----------------------------------------------------------- fit / predict
    def fit(self, census: pl.DataFrame) -> "EnrollmentForecaster":
        """Refit each stage's chosen model (best CV MAE; Voting if not validated) on the
        latest years (the training window) and calibrate its intervals from the CV residuals.

        Parameters: `census`, the ingested years or their panel. Returns self.
        """
        panel = self.panel(census)
        for flag in self._stages:
            self.fit_stage(panel, flag)
        return self

    def fit_stage(self, panel: pl.DataFrame, flag: str, *,
                  data: validation.StageData | None = None) -> "EnrollmentForecaster":
        """Refit one stage's chosen models (one per horizon; the learners once, shared),
        reusing `data` when the caller has it. Returns self."""
        for attr in ("models_", "chosen_", "calibration_"):
            if not hasattr(self, attr):
                setattr(self, attr, {})
        self.training_years_ = sorted(panel[YEAR].unique().to_list())
        data = data if data is not None else self.stage_data(panel, flag)
        if data.height == 0:
            log.warning("%s: no school offers this stage; nothing to fit", flag)
            return self
        stage_cv = getattr(self, "stage_cv_", {}).get(flag)
        validated = stage_cv is not None and stage_cv.folds.height > 0
        ahead = range(1, self.horizons + 1)
        chosen = validation.chosen_models(validation.summarize(stage_cv.folds))[flag] if validated else {}
        unvalidated = [h for h in ahead if h not in chosen]
        if validated and unvalidated:
            log.warning("%s: %s year(s) ahead could not be validated (too few census years after the first test "
                        "year); Voting forecasts them, without intervals", flag, unvalidated)
        chosen = {h: chosen.get(h, models.ENSEMBLE) for h in ahead}
        self.models_[flag] = validation.fit_stage_models(chosen, data, self.training_years_[-1], settings=self._settings,
                                                         device=self.resolve_device(), jobs=self.n_jobs)
        self.chosen_[flag] = chosen
        if validated:
            self.calibration_[flag] = pl.concat([
                intervals.calibration_table(rows, chosen[h]).with_columns(pl.lit(h, dtype=pl.Int32).alias(HORIZON_COLUMN))
                for h, rows in validation.by_horizon(stage_cv.predictions) if h in chosen])
        return self

    def predict(self, census: pl.DataFrame) -> pl.DataFrame:
        """Forecast each of the years after the last census year the models were fitted for
        (T+1 .. T+horizons) for every school offering each fitted stage in T, with 80 % and
        95 % conformal intervals calibrated at that horizon where validated.

        Parameters: `census`, the ingested years or their panel (may be newer than the
        fit's). Returns one row per (school, stage, horizon) with
        `outputs.SCHOOL_FORECAST_COLUMNS` and NU_ANO_CENSO, the forecast year.
        """
        check_is_fitted(self, "models_")
        panel = self.panel(census)
        last = int(panel[YEAR].max())
        names = panel.filter(pl.col(YEAR) == last).select(SCHOOL, "NO_ENTIDADE")
        frames = []
        for flag, model in self.models_.items():
            ahead = sorted(model.models)
            rows = features.origin_features(panel, flag, horizons=max(ahead)).filter(pl.col("origin_year") == last)
            if rows.height == 0:
                continue
            stacked = horizons.stack(rows, ahead, truth=False)
            frame = stacked.select(SCHOOL, "CO_MUNICIPIO", "CO_UF", pl.lit(flag).alias("etapa"),
                                   pl.col(features.HORIZON).cast(pl.Int32).alias(HORIZON_COLUMN),
                                   pl.col("target_year").alias(YEAR),
                                   pl.col(features.ANCHOR).cast(pl.Float64).alias(LAST_ENROLLMENT))
            frame = frame.with_columns(
                pl.col(HORIZON_COLUMN).replace_strict(self.chosen_[flag], return_dtype=pl.String).alias("modelo"),
                pl.Series(FORECAST, np.asarray(model.predict(validation.matrix(stacked)), dtype=np.float64)))
            calibration = self.calibration_.get(flag)
            if calibration is not None:
                frame = pl.concat([self._with_bounds(part, calibration.filter(pl.col(HORIZON_COLUMN) == h))
                                   for h, part in validation.by_horizon(frame)], how="diagonal")
            frames.append(frame.join(names, on=SCHOOL, how="left"))
        self.forecast_years_ = [last + h for h in range(1, max((max(m.models) for m in self.models_.values()), default=0) + 1)]
        return pl.concat(frames, how="diagonal") if frames else pl.DataFrame()

    @staticmethod
    def _with_bounds(frame: pl.DataFrame, calibration: pl.DataFrame) -> pl.DataFrame:
        """One horizon's school forecasts with their intervals (none when it has no residuals)."""
        if calibration.height == 0:
            return frame
        pred, last_year = frame[FORECAST].to_numpy(), frame[LAST_ENROLLMENT].to_numpy()
        return frame.with_columns(pl.Series(k, v) for k, v in intervals.bounds(pred, last_year, calibration).items())

    def aggregate(self, census: pl.DataFrame, schools: pl.DataFrame, *, seed: int = 0) -> dict[int, dict[str, pl.DataFrame]]:
        """Municipal, state and national totals per forecast year and stage, with new
        offerings and intervals.

        Parameters: `census` (as for `predict`), `schools` (what `predict` returned),
        `seed` (of the residual resampling). Returns {forecast year: {"municipios", "ufs",
        "brasil"} frames}; municipal rows carry NO_MUNICIPIO and SG_UF for the planner's search.
        """
        check_is_fitted(self, "models_")
        panel = self.panel(census)
        out: dict[int, dict[str, list[pl.DataFrame]]] = {}
        for flag in schools["etapa"].unique(maintain_order=True):
            if flag not in self.calibration_:
                raise ValueError(f"{flag}: totals need calibrated residuals; call cross_validate() before fit()")
            offerings = forecast.new_offerings(panel, flag)
            for h, rows in validation.by_horizon(schools.filter(pl.col("etapa") == flag)):
                calibration = self.calibration_[flag].filter(pl.col(HORIZON_COLUMN) == h)
                areas = forecast.area_totals(rows, calibration, offerings, flag, years_ahead=h, seed=seed + h)
                for key, frame in areas.items():
                    out.setdefault(int(rows[YEAR][0]), {}).setdefault(key, []).append(frame)
        names = forecast.municipality_names(panel)
        tables = {year: {k: pl.concat(v, how="diagonal") for k, v in parts.items()} for year, parts in out.items()}
        for parts in tables.values():
            parts["municipios"] = parts["municipios"].join(names, on="CO_MUNICIPIO", how="left")
        return tables

    # ----------------------------------------------------------- persistence
    def save(self, folder: Path) -> Path:
        """Write the fitted models, calibration tables and metadata to `folder` (see `modelstore`)."""
        check_is_fitted(self, "models_")
        return modelstore.save(folder, modelstore.SavedModels(self.models_, self.chosen_, self.calibration_,
                                                              self.training_years_))

    @classmethod
    def load(cls, folder: Path, **params) -> "EnrollmentForecaster":
        """A fitted forecaster from a saved folder; raises modelstore.ModelStoreError on a mismatch."""
        saved = modelstore.load(folder)
        params.setdefault("horizons", max((max(c) for c in saved.chosen.values()), default=1))
        fc = cls(stages=list(saved.models), **params)
        fc.models_, fc.chosen_, fc.calibration_ = saved.models, saved.chosen, saved.calibration
        fc.training_years_ = saved.training_years
        return fc


def combine(results: list[validation.StageCV]) -> CVResult:
    """Stages' walk-forward results as one CVResult (the tables a run writes), computed stage
    by stage: the predictions of all stages are never copied into one frame here."""
    folds = pl.concat([r.folds for r in results])
    coverage = pl.concat([validation.coverage_table(r.predictions) for r in results])
    intervals_and_totals = pl.concat([validation.interval_and_totals_table(r.predictions, coverage.filter(pl.col("etapa") == r.flag))
                                      for r in results])
    summary = validation.summarize(folds, intervals_and_totals)
    return CVResult(summary, [r.predictions for r in results], folds, coverage,
                    pl.concat([validation.error_by_size(r.predictions) for r in results]),
                    pl.concat([validation.totals_by_year(r.predictions) for r in results]))
