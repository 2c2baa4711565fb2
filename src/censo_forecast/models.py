"""Models per stage, as scikit-learn estimators, and the choice of device.

The boosted models learn next year's *change* from the last observed enrollment and
predict the level (never below zero): a regression on levels or logs averages the zeros
of schools that stop offering a stage with everyone else, and loses to persistence.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from censo_forecast import boosters, damping, machine
from censo_forecast.config import ModelSettings
from censo_forecast.outputs import COHORT, DEMOGRAPHY, DRIFT, ENSEMBLE, PERSISTENCE

log = logging.getLogger(__name__)

BASELINES = (PERSISTENCE, DRIFT, COHORT, DEMOGRAPHY)  # Demografia only where demography is given
LEARNERS = boosters.LEARNERS  # ("LightGBM", "XGBoost")
MODEL_NAMES = (*BASELINES, *LEARNERS, ENSEMBLE)
CENSUS_MODEL_NAMES = tuple(m for m in MODEL_NAMES if m != DEMOGRAPHY)  # those of a run without demography


# ------------------------------------------------------------------- device
@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "cuda"
    learners: dict  # learner name -> the library's device value ("cpu", "cuda", "gpu")
    reason: str

    def of(self, learner: str) -> str:
        return self.learners.get(learner, "cpu")


def _cuda_devices() -> int:
    """NVIDIA GPUs visible through the driver API (no torch needed)."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0:
            return count.value
        return 0
    return 0


def select_device(requested: str = "auto") -> Device:
    """auto: a GPU for every learner whose installed build can use one; cpu; cuda: insist
    (an error when no GPU is visible or no learner's build can use it)."""
    cpu = {name: "cpu" for name in LEARNERS}
    if requested == "cpu":
        return Device("cpu", cpu, "CPU requested")
    gpus = _cuda_devices()
    if gpus == 0:
        if requested == "cuda":
            raise RuntimeError("--device cuda: no NVIDIA GPU is visible to the CUDA driver (libcuda)")
        return Device("cpu", cpu, "no NVIDIA GPU visible to the CUDA driver")
    found = {name: boosters.adapter(name).gpu_device() for name in LEARNERS}
    if requested == "cuda" and not any(found.values()):
        raise RuntimeError(f"--device cuda: no GPU support in the installed builds of {', '.join(LEARNERS)}")
    reason = f"{gpus} GPU(s); " + "; ".join(
        f"{name} {value.upper() if value else 'CPU (installed build has no GPU support)'}" for name, value in found.items())
    return Device("cuda" if any(found.values()) else "cpu", {n: v or "cpu" for n, v in found.items()}, reason)


# ------------------------------------------------------------------- models
def column(X, index: int) -> np.ndarray:
    """One column of the model matrix in float64 (the baselines' arithmetic), without
    converting the whole matrix first (a national fold's is hundreds of megabytes)."""
    return np.asarray(X)[:, index].astype(np.float64)


class ChangeRegressor(RegressorMixin, BaseEstimator):
    """Gradient boosting on the change from the anchor column (last year's enrollment).

    A Huber loss (delta 2 students) behaves like absolute error on the heavy tails of
    closures and openings: on the synthetic census squared error lost to persistence.

    Parameters: `learner` ("LightGBM" or "XGBoost"), `anchor` (column index of last
    year's enrollment), `settings` (hyper-parameters), `device` (the library's device
    value), `n_jobs` (threads). Fitted state: `booster_`, the library's native booster.
    """

    def __init__(self, learner: str = "LightGBM", anchor: int = 0, settings: ModelSettings | None = None,
                 device: str = "cpu", n_jobs: int = 1):
        self.learner = learner
        self.anchor = anchor
        self.settings = settings
        self.device = device
        self.n_jobs = n_jobs

    @property
    def adapter(self) -> boosters.BoosterAdapter:
        return boosters.adapter(self.learner)

    def booster_params(self) -> dict:
        """Keyword arguments of the library's scikit-learn estimator (also its Dask twin's)."""
        return self.adapter.params(self.settings or ModelSettings(), self.device, self.n_jobs)

    def change(self, X, y) -> np.ndarray:
        """Training target: next year's change from the anchor (lazy on dask arrays too)."""
        return y - np.nan_to_num(X[:, self.anchor])

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        target = self.change(X, np.asarray(y, dtype=np.float64))
        params = {**self.booster_params(), "n_jobs": machine.threads_for(len(X), self.n_jobs)}
        return self.set_booster(self.adapter.fit(X, target, params), X.shape[1])

    def set_booster(self, booster, n_features: int) -> ChangeRegressor:
        """Adopt a native booster trained elsewhere (a cluster) or loaded from a file; returns self."""
        self.booster_, self.n_features_in_ = booster, n_features
        return self

    def predict_change(self, X) -> np.ndarray:
        check_is_fitted(self, "booster_")
        return self.adapter.predict(self.booster_, np.asarray(X, dtype=np.float32))

    def contributions(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(SHAP values n x f, base values n) of the predicted change."""
        check_is_fitted(self, "booster_")
        raw = self.adapter.contributions(self.booster_, np.asarray(X, dtype=np.float32))
        return raw[:, :-1], raw[:, -1]

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return np.maximum(np.nan_to_num(X[:, self.anchor]) + self.predict_change(X), 0.0)


class Persistence(RegressorMixin, BaseEstimator):
    """Next year = this year. Parameter: `anchor`, the column of last year's enrollment."""

    def __init__(self, anchor: int = 0):
        self.anchor = anchor

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        return np.nan_to_num(column(X, self.anchor))


class CohortProgression(RegressorMixin, BaseEstimator):
    """The planners' cohort-progression forecast (`Coorte`), computed with the features
    (`cohort.py`). Parameter: `column`, the index of the cohort_forecast feature."""

    def __init__(self, column: int = 0):
        self.column = column

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        return np.maximum(np.nan_to_num(column(X, self.column)), 0.0)


class BirthScaled(RegressorMixin, BaseEstimator):
    """The last census times the municipality's birth-cohort ratio (`Demografia`, demography/known.py):
    a shrinking cohort of six-year-olds shrinks early elementary. Without a ratio (no
    demography, an incomplete cohort) it is persistence. Parameters: `anchor`, the column of
    last year's enrollment; `ratio`, the column of the birth ratio at the row's horizon."""

    def __init__(self, anchor: int = 0, ratio: int = 0):
        self.anchor = anchor
        self.ratio = ratio

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        return np.nan_to_num(column(X, self.anchor)) * np.nan_to_num(column(X, self.ratio), nan=1.0)


class Drift(RegressorMixin, BaseEstimator):
    """This year times the stage's aggregate one-year change in the most recent year of
    training data (closures and stage drops included), compounded over the row's horizon,
    damped (`damping.steps`). Parameters: `anchor`, the column of last year's enrollment;
    `horizon`, the column of the years ahead (None: one); `damping` (1: undamped). Fitted
    state: `ratio_`."""

    def __init__(self, anchor: int = 0, horizon: int | None = None, damping: float = 1.0):
        self.anchor = anchor
        self.horizon = horizon
        self.damping = damping

    def fit(self, X, y):
        base = np.nan_to_num(column(X, self.anchor))
        self.ratio_ = float(np.sum(y) / np.sum(base)) if np.sum(base) > 0 else 1.0
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        years = column(X, self.horizon) if self.horizon is not None else 1.0
        return np.nan_to_num(column(X, self.anchor)) * self.ratio_ ** damping.steps(years, self.damping)


class Voting(RegressorMixin, BaseEstimator):
    """The mean of already fitted models' predictions (no further fit). Parameter:
    `estimators`, the fitted models (ChangeRegressors or HorizonSplits, for SHAP)."""

    def __init__(self, estimators: list | None = None):
        self.estimators = estimators

    def fit(self, X=None, y=None):
        return self

    @property
    def members(self) -> list:
        return list(self.estimators or [])

    def predict(self, X) -> np.ndarray:
        return self.combine([est.predict(X) for est in self.members])

    @staticmethod
    def combine(predictions: list[np.ndarray]) -> np.ndarray:
        """The vote of its members' predictions (in `members` order): their mean."""
        return np.mean(predictions, axis=0)

    def predict_change(self, X) -> np.ndarray:
        return np.mean([est.predict_change(X) for est in self.members], axis=0)

    def contributions(self, X) -> tuple[np.ndarray, np.ndarray]:
        """SHAP values and base values: the mean of its members' (SHAP is additive)."""
        parts = [est.contributions(X) for est in self.members]
        return np.mean([p[0] for p in parts], axis=0), np.mean([p[1] for p in parts], axis=0)


def predict_all(fitted: dict, X) -> dict[str, np.ndarray]:
    """Every fitted model's predictions of X, in order. A Voting whose members come before it
    averages their predictions instead of making them again: the same numbers, and at national
    size about half the time predicting a walk-forward fold (benchmarks/README.md, "pipeline")."""
    made: dict[int, np.ndarray] = {}
    out = {}
    for name, model in fitted.items():
        members = model.members if isinstance(model, Voting) else []
        if members and all(id(m) in made for m in members):
            out[name] = model.combine([made[id(m)] for m in members])
        else:
            out[name] = model.predict(X)
        made[id(model)] = out[name]
    return out


class HorizonSplit(RegressorMixin, BaseEstimator):
    """One learner whose first years ahead have models of their own: rows of a horizon in
    `own` go to that horizon's model (trained on its pairs only), the others to `shared`
    (trained on every horizon's). Parameters: `own` ({years ahead: fitted ChangeRegressor}),
    `shared` (a fitted ChangeRegressor, or None when every horizon has its own), `horizon`
    (the column of the years ahead)."""

    def __init__(self, own: dict | None = None, shared: ChangeRegressor | None = None, horizon: int = 0):
        self.own = own
        self.shared = shared
        self.horizon = horizon

    def fit(self, X=None, y=None):
        return self

    @property
    def learner(self) -> str:
        return next(iter(self.parts().values())).learner

    def parts(self) -> dict:
        """{years ahead: own model} and, under None, the shared one."""
        return {**dict(sorted((self.own or {}).items())), **({None: self.shared} if self.shared is not None else {})}

    def _routes(self, X: np.ndarray):
        """(rows, model) pairs: each row goes to its horizon's own model, the rest to the shared one."""
        ahead = X[:, self.horizon].astype(int)
        own = self.own or {}
        served = np.zeros(len(X), dtype=bool)
        for h, model in [*own.items(), (None, self.shared)]:
            rows = ~served if h is None else (ahead == h)
            if rows.any():
                if model is None:
                    raise ValueError(f"no model for {sorted(set(ahead[rows].tolist()))} year(s) ahead; own models for {sorted(own)}")
                yield rows, model
            served |= rows

    def _each(self, X, method: str) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        out = np.empty(len(X), dtype=np.float64)
        for rows, model in self._routes(X):
            out[rows] = getattr(model, method)(X[rows])
        return out

    def predict(self, X) -> np.ndarray:
        return self._each(X, "predict")

    def predict_change(self, X) -> np.ndarray:
        return self._each(X, "predict_change")

    def contributions(self, X) -> tuple[np.ndarray, np.ndarray]:
        """SHAP values and base values, each row's from the model that serves its horizon."""
        X = np.asarray(X, dtype=np.float32)
        values, base = np.empty(X.shape, dtype=np.float64), np.empty(len(X), dtype=np.float64)
        for rows, model in self._routes(X):
            values[rows], base[rows] = model.contributions(X[rows])
        return values, base


class ByHorizon(RegressorMixin, BaseEstimator):
    """A stage's forecaster: at each horizon the model chosen for it (fitted already; the
    learners are shared). Rows are stacked by horizon (`horizons.stack`). Parameters:
    `models` ({years ahead: fitted model}), `horizon` (the column of the years ahead)."""

    def __init__(self, models: dict | None = None, horizon: int = 0):
        self.models = models
        self.horizon = horizon

    def fit(self, X=None, y=None):
        return self

    @property
    def by_years_ahead(self) -> dict:
        """{years ahead: model}, in order."""
        return dict(sorted((self.models or {}).items()))

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        ahead = X[:, self.horizon].astype(int)
        models = self.by_years_ahead
        unknown = sorted(set(ahead.tolist()) - set(models))
        if unknown:
            raise ValueError(f"no model for {unknown} year(s) ahead; fitted for {list(models)}")
        out = np.empty(len(X), dtype=np.float64)
        for h, model in models.items():
            rows = ahead == h
            if rows.any():
                out[rows] = model.predict(X[rows])
        return out
