"""The one place that builds a stage's models: learners (with their settings, device and
threads) and baselines (with the feature columns they read).

A `ModelFactory` is made once per stage by whoever fits it (the walk-forward, the refit,
an engine's distributed training), so settings, device and threads travel as one object;
`restore_learner` and `restore_baseline` rebuild saved models the same way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from censo_forecast import damping, machine, models
from censo_forecast import horizons as horizons_mod
from censo_forecast.config import ModelSettings
from censo_forecast.features import ANCHOR_INDEX, BIRTH_RATIO_INDEX, COHORT_INDEX, FEATURES, HORIZON_INDEX
from censo_forecast.outputs import ACTUAL, COHORT, DEMOGRAPHY, DRIFT, ENSEMBLE, PERSISTENCE

if TYPE_CHECKING:
    from censo_forecast.stagedata import StageData


@dataclass(frozen=True)
class ModelFactory:
    """Builds and fits a stage's models. `jobs`: threads per fit (already resolved: positive)."""

    settings: ModelSettings
    device: models.Device
    jobs: int = 1

    def learner(self, name: str, jobs: int | None = None) -> models.ChangeRegressor:
        """An unfitted boosted model ("LightGBM" or "XGBoost") on this factory's device."""
        return models.ChangeRegressor(name, ANCHOR_INDEX, self.settings, self.device.of(name),
                                      self.jobs if jobs is None else jobs)

    def fit_learners(self, X: np.ndarray, y: np.ndarray, names: tuple[str, ...] = models.LEARNERS) -> dict:
        """The named learners fitted on the same rows, and their Voting mean when both are named."""
        return with_ensemble(dict(zip(names, self.fit_many([(name, X, y) for name in names]), strict=True)))

    def fit_many(self, tasks: list[tuple[str, np.ndarray, np.ndarray]]) -> list[models.ChangeRegressor]:
        """Each (learner name, X, y) fitted, in order, side by side on the CPU: `jobs` threads
        shared among up to `jobs` fits at once. A boosting fit uses a second thread poorly
        (a national fold: LightGBM 6.3 s on one thread, 5.8 s on two), so two one-thread
        fits at once took the four fits of a fold 8.5 s against 13.5 s one after another
        (benchmarks/README.md, "fits side by side"); every model is the same whatever its
        threads. Fits on a GPU run one at a time."""
        on_cpu = all(self.device.of(name) == "cpu" for name, _, _ in tasks)
        workers = min(len(tasks), self.jobs) if on_cpu else 1
        if workers <= 1:
            return [self.learner(name).fit(X, y) for name, X, y in tasks]
        threads = max(1, self.jobs // workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="fit") as pool:  # the libraries release the GIL
            fitted = list(pool.map(lambda task: self.learner(task[0], threads).fit(task[1], task[2]), tasks))
        machine.release_freed_memory()  # what the fits freed in their threads' arenas
        return fitted

    def row_cap(self, ahead: list[int], horizons: int) -> int:
        """Pairs a fit on the years ahead in `ahead` may see: its horizons' share of
        `max_training_rows` (0: every pair). A horizon's own model so sees as many pairs of its
        horizon as the shared model does, and costs a fifth of its fit at five horizons (the
        national run's budget, benchmarks/README.md); its gain is the trees it keeps to itself."""
        cap = self.settings.max_training_rows
        return cap if cap <= 0 else max(1, cap * len(ahead) // horizons)

    def own_horizons(self, horizons: int) -> list[int]:
        """The years ahead that get a model of their own (`separate_horizons`); none with one
        horizon, where the shared model is already that horizon's own."""
        return horizons_mod.up_to(min(self.settings.separate_horizons, horizons)) if horizons > 1 else []

    def baseline(self, name: str, data: StageData, origin: int):
        """A baseline fitted for forecasts from `origin`: Persistencia; Coorte or Demografia
        (computed with the features); or Deriva, the stage's aggregate one-year change into `origin` (the pairs
        of the latest earlier origin at one year ahead), compounded over the horizon."""
        if name != DRIFT:
            return restore_baseline(name)
        latest = max((o for o in data.origin_years() if o < origin), default=None)
        rows = horizons_mod.stack(data.origin_rows(latest), [1]) if latest is not None else None
        if rows is None or rows.height == 0:
            return _drift().fit(np.empty((0, len(FEATURES)), dtype=np.float32), np.empty(0))
        return _drift().fit(horizons_mod.matrix(rows), rows[ACTUAL].to_numpy())


def with_ensemble(fitted: dict) -> dict:
    """The fitted learners, and Voting over them when every learner is there."""
    if set(models.LEARNERS) <= set(fitted):
        return {**fitted, ENSEMBLE: models.Voting([fitted[n] for n in models.LEARNERS])}
    return fitted


def split_by_horizon(shared: dict | None, own: dict[int, dict], names: tuple[str, ...]) -> dict:
    """Each named learner as a `models.HorizonSplit` of its own-horizon fits (`own`: {years
    ahead: {name: model}}) and its shared fit (`shared`: {name: model}, or None), with Voting."""
    if not own:
        return with_ensemble({name: (shared or {})[name] for name in names})
    return with_ensemble({name: models.HorizonSplit({h: fits[name] for h, fits in own.items()},
                                                    (shared or {}).get(name), HORIZON_INDEX) for name in names})


def _drift() -> models.Drift:
    return models.Drift(ANCHOR_INDEX, HORIZON_INDEX, damping.DAMPING)


def restore_baseline(name: str, drift_ratio: float | None = None):
    """A baseline ready to predict: Persistencia, Coorte, Demografia, or Deriva with a known ratio."""
    empty = np.empty((0, len(FEATURES)), dtype=np.float32)
    if name == PERSISTENCE:
        return models.Persistence(ANCHOR_INDEX).fit(empty)
    if name == COHORT:
        return models.CohortProgression(COHORT_INDEX).fit(empty)
    if name == DEMOGRAPHY:
        return models.BirthScaled(ANCHOR_INDEX, BIRTH_RATIO_INDEX).fit(empty)
    if name == DRIFT:
        drift = _drift()
        drift.ratio_ = 1.0 if drift_ratio is None else float(drift_ratio)
        drift.n_features_in_ = len(FEATURES)
        return drift
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(models.BASELINES)}")


def restore_learner(name: str, booster, own: dict | None = None) -> models.ChangeRegressor | models.HorizonSplit:
    """A boosted model around a native booster loaded from a file or trained elsewhere
    (`booster` None: no shared model), split by horizon when `own` ({years ahead: native
    booster}) names models of their own."""
    if name not in models.LEARNERS:
        raise ValueError(f"unknown learner {name!r}; known: {', '.join(models.LEARNERS)}")

    def wrap(native) -> models.ChangeRegressor:
        return models.ChangeRegressor(name, ANCHOR_INDEX).set_booster(native, len(FEATURES))

    if not own:
        return wrap(booster)
    return models.HorizonSplit({h: wrap(b) for h, b in sorted(own.items())}, None if booster is None else wrap(booster),
                               HORIZON_INDEX)


def by_horizon(chosen: dict[int, object]) -> models.ByHorizon:
    """A stage's forecaster from the model fitted for each horizon."""
    return models.ByHorizon(chosen, HORIZON_INDEX)
