"""The user-facing Python API: validate, fit and forecast enrollment per school and stage.

    from censo_forecast import EnrollmentForecaster, load_census
    census = load_census("data/cache")                 # the ingested years
    fc = EnrollmentForecaster(stages=["IN_MED"]).fit(census)
    fc.cv_.summary                                      # the walk-forward table (resultados_finais)
    schools = fc.predict(census)                        # the next five years per school
    totals = fc.aggregate(census, schools)              # per municipality, state and country
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.utils.metadata_routing import UNUSED
from sklearn.utils.validation import check_is_fitted

from censo_forecast import coherence, config, features, forecast, machine, models, modelstore, municipal, results, validation
from censo_forecast.config import ModelSettings
from censo_forecast.demography import known
from censo_forecast.demography.tables import Demography
from censo_forecast.engine import Engine, LocalEngine
from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import SCHOOL, YEAR
from censo_forecast.learners import ModelFactory
from censo_forecast.outputs import (
    FORECAST,
    HORIZON,
    LAST_ENROLLMENT,
    MUNICIPALITIES,
    STAGE,
)
from censo_forecast.panel import build_panel, stage_view
from censo_forecast.results import CVResult
from censo_forecast.runner import Hooks, StageFit, StageRunner

log = logging.getLogger(__name__)


class EnrollmentForecaster(BaseEstimator):
    """Enrollment per school and stage for the years after the last census year, with
    scikit-learn's conventions: parameters stored as given, checked in `fit`; `fit` returns
    self; fitted state ends in `_`; `clone` gives an equal unfitted forecaster.

    Parameters
    ----------
    stages : list of str or None, default None
        Offer flags of the stages to model (None: all ten, `catalog.STAGES`).
    horizons : int, default 5
        Forecast years after the last census year (T+1 .. T+horizons), each validated.
    model : ModelSettings or None, default None
        Boosting hyper-parameters and training window (None: `ModelSettings()`); nested
        settings are parameters too: ``set_params(model__learning_rate=0.05)``.
    device : {"auto", "cpu", "cuda"}, default "auto"
        Where the boosters train (see `models.select_device`).
    min_train_years : int, default 3
        Census years before the first walk-forward test year.
    n_jobs : int, default 2
        Threads per model; -1 uses every available CPU, -2 all but one.
    engine : Engine or None, default None
        Where features and training run (None: this process; a cluster engine from
        `engine.open_engine`).
    demography : demography.tables.Demography or None, default None
        Births and population per municipality (`demography.tables.read_folder`); their
        features and the `Demografia` baseline join the others (None: without them).

    Attributes
    ----------
    cv_ : results.CVResult
        The walk-forward validation of every fitted stage (`cv_.summary` is resultados_finais.csv).
    models_ : dict of str to models.ByHorizon or coherence.SumOfParts
        Per stage, the chosen model at each horizon, refitted on the latest years; for a stage
        published as the sum of others fitted with it (all elementary), its parts.
    chosen_ : dict of str to dict of int to str
        Per stage and years ahead, the name of the chosen model.
    calibration_ : dict of str to polars.DataFrame
        Per stage, the walk-forward residuals of the chosen models (a `horizonte` column).
    training_years_ : list of int
        The census years the models were fitted on.
    device_ : models.Device
        The device the learners trained on.
    skipped_stages_ : dict of str to str
        The stages asked for that could not be validated, and why.
    trained_with_demography_ : str or None
        Where the births and population the models learned from came from (None: without).
    """

    # the census frames are the data, not metadata to route: no set_fit_request and the like
    __metadata_request__fit = {"census": UNUSED}
    __metadata_request__predict = {"census": UNUSED}
    __metadata_request__score = {"census": UNUSED, "later": UNUSED}

    def __init__(self, stages: list[str] | None = None, *, horizons: int = config.default("horizons"),
                 model: ModelSettings | None = None, device: str = config.default("device"),
                 min_train_years: int = config.default("min_train_years"), n_jobs: int = config.default("jobs"),
                 engine: Engine | None = None, demography: Demography | None = None):
        self.stages = stages
        self.horizons = horizons
        self.model = model
        self.device = device
        self.min_train_years = min_train_years
        self.n_jobs = n_jobs
        self.engine = engine
        self.demography = demography

    # ----------------------------------------------------------- parameters
    def set_params(self, **params) -> EnrollmentForecaster:
        """scikit-learn's `set_params`; ``model__<setting>`` replaces the model settings with a
        checked copy (the `ModelSettings` given is never changed in place)."""
        nested = {key.split("__", 1)[1]: params.pop(key) for key in list(params) if key.startswith("model__")}
        if nested:
            self.model = (self.model if self.model is not None else ModelSettings()).replace(**nested)
        return super().set_params(**params)

    def _checked(self) -> tuple[list[str], ModelSettings, int]:
        """The parameters, checked with the same rules as the settings: (stages, model settings, threads)."""
        stages = config.check_stages(self.stages) if self.stages is not None else [s.flag for s in catalog.STAGES]
        config.check_horizons(self.horizons)
        config.check_device(self.device)
        config.check_min_train_years(self.min_train_years)
        model = self.model if self.model is not None else ModelSettings()
        if not isinstance(model, ModelSettings):
            raise ValueError(f"model must be a ModelSettings, not {type(model).__name__}")
        return stages, model.replace(), machine.effective_jobs(self.n_jobs)

    def _panel(self, census: pl.DataFrame) -> pl.DataFrame:
        """The (school, year) panel of a census frame with the demography known at each year
        (a panel is taken as it is, demography attached or not)."""
        if "active" in census.columns:
            return census
        return known.attach(build_panel(census), self.demography)

    # ----------------------------------------------------------- fit
    def fit(self, census: pl.DataFrame) -> EnrollmentForecaster:
        """Validate each stage walk-forward, choose its model per horizon (the best walk-forward
        MAE, baselines included), refit the chosen models on the latest years and calibrate
        their intervals from the walk-forward residuals.

        Parameters
        ----------
        census : polars.DataFrame
            The ingested census years (`load_census`) or their panel.

        Returns
        -------
        EnrollmentForecaster
            self, fitted.

        Raises
        ------
        ValueError
            When a parameter is out of range, or no stage can be validated (too few census
            years, no school offering it); a stage that cannot be is skipped with a warning.
        """
        self._fit_panel(self._panel(census))
        return self

    def _fit_panel(self, panel: pl.DataFrame, hooks: Hooks | None = None, device: models.Device | None = None) -> list[StageFit]:
        """`fit` on a panel, with the pipeline's hooks; returns the stages' fits."""
        stages, runner = self._runner(hooks, device)
        self.device_ = runner.factory.device
        fits = runner.fit_all(panel, stages)
        self.skipped_stages_ = dict(runner.skipped)
        self.training_years_ = sorted(panel[YEAR].unique().to_list())
        source = self.demography.source if self.demography is not None else "a panel with demography"
        self.trained_with_demography_ = source if known.present(panel) else None
        self.models_ = {f.flag: f.model for f in fits}
        self.chosen_ = {f.flag: f.chosen for f in fits}
        self.calibration_ = {f.flag: f.calibration for f in fits}
        self.cv_ = results.combine([(f.cv, f.results) for f in fits])
        return fits

    def cross_validate(self, census: pl.DataFrame) -> CVResult:
        """The walk-forward validation alone, without refitting (`fit` runs it too and keeps it
        in `cv_`); the forecaster's fitted state is left as it was.

        Parameters
        ----------
        census : polars.DataFrame
            The ingested census years or their panel.

        Returns
        -------
        results.CVResult
            `summary` is resultados_finais.csv; the other tables are those `run` writes.

        Raises
        ------
        ValueError
            As `fit`.
        """
        stages, runner = self._runner()
        return results.combine(runner.validate_all(self._panel(census), stages))

    def _runner(self, hooks: Hooks | None = None, device: models.Device | None = None) -> tuple[list[str], StageRunner]:
        """The checked stages and the stage loop for them: this forecaster's engine, and its
        model settings, device (the engine's choice unless given) and threads in one factory."""
        stages, settings, threads = self._checked()
        engine = self.engine if self.engine is not None else LocalEngine()
        device = device if device is not None else engine.select_device(self.device)
        log.info("device: %s (%s)", device.name, device.reason)
        return stages, StageRunner(engine, ModelFactory(settings, device, threads), horizons=self.horizons,
                                   min_train_years=self.min_train_years, hooks=hooks)

    # ----------------------------------------------------------- forecast
    def predict(self, census: pl.DataFrame) -> pl.DataFrame:
        """Forecast each of the years after the census's last year that the models were fitted
        for, for every school offering each fitted stage in that year.

        Parameters
        ----------
        census : polars.DataFrame
            The ingested census years or their panel (may be newer than the fit's).

        Returns
        -------
        polars.DataFrame
            One row per (school, stage, horizon): `outputs.SCHOOL_FORECAST_COLUMNS` and
            NU_ANO_CENSO, the forecast year; 80 % and 95 % conformal bounds where the horizon
            was validated.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before `fit` (or `load`).
        """
        check_is_fitted(self, "models_")
        panel = self._panel(census)
        if self.trained_with_demography_ and not known.present(panel):
            log.warning("these models learned from births and population (%s), which this forecast lacks: their "
                        "demographic features are empty and the forecasts poorer", self.trained_with_demography_)
        frames: dict[str, pl.DataFrame] = {}
        for flag, model in self.models_.items():
            if isinstance(model, coherence.SumOfParts):
                continue  # below, once its parts are forecast
            rows = features.forecast_rows(panel, flag, horizons=max(model.by_years_ahead))
            if rows.height == 0:
                log.warning("%s: no school offers it in the census's last year, %d: it has no forecast",
                            flag, panel.select(pl.col(YEAR).max()).item())
            if rows.height:
                frames[flag] = forecast.school_forecasts(rows, flag, model, self.chosen_[flag], self.calibration_.get(flag))
        for flag, model in self.models_.items():
            if isinstance(model, coherence.SumOfParts) and any(p in frames for p in model.parts):
                parts = pl.concat([frames[p] for p in model.parts if p in frames], how="diagonal")
                frames[flag] = forecast.sum_of_parts(parts, flag, model.parts, self.calibration_.get(flag))
        ordered = [frames[flag] for flag in self.models_ if flag in frames]
        return forecast.published(pl.concat(ordered, how="diagonal"), panel, self.calibration_) if ordered else pl.DataFrame()

    def aggregate(self, census: pl.DataFrame, schools: pl.DataFrame, *, seed: int = 0,
                  births: dict[str, municipal.Choice] | None = None) -> dict[int, dict[str, pl.DataFrame]]:
        """Municipal, state and national totals per forecast year and stage, with new
        offerings, the births blend of municipal totals where the walk-forward chose it (with
        demography: `municipal`) and intervals from resampled walk-forward errors of totals.

        Parameters
        ----------
        census : polars.DataFrame
            As for `predict`.
        schools : polars.DataFrame
            What `predict` returned.
        seed : int, default 0
            Seed of the residual resampling.
        births : dict of str to municipal.Choice, optional
            The stages' births weights (`municipal.choices` of the same census), for a caller
            that keeps them (the run records them); None: chosen here.

        Returns
        -------
        dict of int to dict of str to polars.DataFrame
            {forecast year: {"municipios", "ufs", "brasil": totals}}; municipal rows carry
            NO_MUNICIPIO and SG_UF.

        Raises
        ------
        ValueError
            For a stage without calibration (saved by an older version).
        """
        check_is_fitted(self, "models_")
        panel = self._panel(census)
        out: dict[int, dict[str, list[pl.DataFrame]]] = {}
        chosen = municipal.choices(panel, self.calibration_, say=True) if births is None else births
        for flag in schools[STAGE].unique(maintain_order=True):
            if flag not in self.calibration_:
                raise ValueError(f"{flag}: totals need the walk-forward residuals, which these models lack; refit them")
            offerings = forecast.new_offerings(panel, flag)
            choice = chosen.get(flag)
            walk_forward = municipal.walk_forward_totals(self.calibration_[flag], panel, flag, choice)  # totals as published
            for h, rows in validation.by_horizon(schools.filter(pl.col(STAGE) == flag)):
                blend = (choice.at(h), municipal.births_totals(choice, flag, h)) if choice and choice.at(h) else None
                areas = forecast.area_totals(rows, walk_forward.filter(pl.col(HORIZON) == h), offerings, flag, years_ahead=h,
                                             births=blend, seed=seed + h)
                for key, frame in areas.items():
                    out.setdefault(int(rows[YEAR][0]), {}).setdefault(key, []).append(frame)
        names = forecast.municipality_names(panel)
        tables = {year: {k: coherence.areas(pl.concat(v, how="diagonal")) for k, v in parts.items()} for year, parts in out.items()}
        for parts in tables.values():
            parts[MUNICIPALITIES] = parts[MUNICIPALITIES].join(names, on="CO_MUNICIPIO", how="left")
        return tables

    def score(self, census: pl.DataFrame, later: pl.DataFrame) -> float:
        """Skill against persistence on census years the forecast did not see: 1 - MAE of the
        forecast / MAE of "next year = this year", over every (school, stage, forecast year)
        that `later` holds. The truth is training's: a school that no longer offers the stage
        (or is gone) counts 0. Higher is better; 0 is persistence's error.

        Parameters
        ----------
        census : polars.DataFrame
            The census the forecast is made from (as for `predict`).
        later : polars.DataFrame
            Census years after it (`load_census`), one or more of the forecast years.

        Returns
        -------
        float

        Raises
        ------
        ValueError
            When `later` holds none of the forecast years.
        """
        schools = self.predict(census)
        first = census.select(pl.col(YEAR).max()).item()
        later_years = [y for y in later[YEAR].unique().to_list() if y > first]
        truth_panel = build_panel(later.filter(pl.col(YEAR).is_in(later_years)))
        truths = [stage_view(truth_panel, flag).select(SCHOOL, YEAR, pl.lit(flag).alias(STAGE), features.enrolled().alias("_truth"))
                  for flag in self.models_]
        scored = schools.filter(pl.col(YEAR).is_in(later_years)).join(
            pl.concat(truths), on=[SCHOOL, YEAR, STAGE], how="left").with_columns(pl.col("_truth").fill_null(0.0))
        if scored.height == 0:
            raise ValueError(f"`later` holds none of the forecast years {sorted(schools[YEAR].unique().to_list())}")
        truth = scored["_truth"].to_numpy().astype(np.float64)
        error = np.abs(scored[FORECAST].to_numpy() - truth).mean()
        baseline = np.abs(scored[LAST_ENROLLMENT].to_numpy() - truth).mean()
        return float(1.0 - error / baseline) if baseline > 0 else float(error == 0)

    # ----------------------------------------------------------- persistence
    def save(self, folder: Path) -> Path:
        """Write the fitted models, calibration tables and metadata to `folder` (see `modelstore`).

        Parameters
        ----------
        folder : pathlib.Path

        Returns
        -------
        pathlib.Path
            The folder.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before `fit`.
        """
        check_is_fitted(self, "models_")
        return modelstore.save(folder, modelstore.SavedModels(self.models_, self.chosen_, self.calibration_,
                                                              self.training_years_, self.trained_with_demography_))

    @classmethod
    def load(cls, folder: Path, **params) -> EnrollmentForecaster:
        """A fitted forecaster from a saved folder (without `cv_`, which is not saved).

        Parameters
        ----------
        folder : pathlib.Path
            What `save` wrote.
        **params
            Parameters of the forecaster (`horizons` defaults to the saved models').

        Returns
        -------
        EnrollmentForecaster

        Raises
        ------
        modelstore.ModelStoreError
            When the folder does not hold what `save` wrote, or other library versions or features.
        """
        saved = modelstore.load(folder)
        params.setdefault("horizons", max((max(c) for c in saved.chosen.values()), default=1))
        fc = cls(stages=list(saved.models), **params)
        fc.models_, fc.chosen_, fc.calibration_ = saved.models, saved.chosen, saved.calibration
        fc.training_years_ = saved.training_years
        fc.trained_with_demography_ = saved.demography
        return fc



