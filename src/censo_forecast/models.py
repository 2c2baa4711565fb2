"""Models per stage, as scikit-learn estimators, and the choice of device.

The boosted models learn next year's *change* from the last observed enrollment and
predict the level (never below zero): a regression on levels or logs averages the zeros
of schools that stop offering a stage with everyone else, and loses to persistence.
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from censo_forecast.config import ModelSettings

log = logging.getLogger(__name__)

BASELINES = ("Persistencia", "Deriva")
LEARNERS = ("LightGBM", "XGBoost")
ENSEMBLE = "Voting"
MODEL_NAMES = (*BASELINES, *LEARNERS, ENSEMBLE)


# ------------------------------------------------------------------- device
@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "cuda"
    xgboost: str  # XGBoost's `device`
    lightgbm: str  # LightGBM's `device_type`
    reason: str


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


def _lightgbm_gpu() -> str | None:
    """LightGBM's GPU flavour if this build has one, found by a tiny fit."""
    import lightgbm as lgb

    X = np.random.default_rng(0).random((64, 2))
    for device_type in ("cuda", "gpu"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lgb.LGBMRegressor(n_estimators=1, device_type=device_type, verbose=-1).fit(X, X[:, 0])
            return device_type
        except Exception:  # LightGBMError: this build has no such device
            continue
    return None


def _xgboost_cuda() -> bool:
    import xgboost as xgb

    return bool(xgb.build_info().get("USE_CUDA"))


def select_device(requested: str = "auto") -> Device:
    """auto: CUDA when a GPU and a CUDA build are present; cpu; cuda: insist (error if impossible)."""
    if requested == "cpu":
        return Device("cpu", "cpu", "cpu", "CPU requested")
    gpus = _cuda_devices()
    if gpus == 0:
        if requested == "cuda":
            raise RuntimeError("--device cuda: no NVIDIA GPU is visible to the CUDA driver (libcuda)")
        return Device("cpu", "cpu", "cpu", "no NVIDIA GPU visible to the CUDA driver")
    xgb_cuda = _xgboost_cuda()
    if not xgb_cuda and requested == "cuda":
        raise RuntimeError("--device cuda: this XGBoost build has no CUDA support")
    lgbm = _lightgbm_gpu() or "cpu"
    reason = f"{gpus} GPU(s); XGBoost {'CUDA' if xgb_cuda else 'CPU (no CUDA build)'}; LightGBM {lgbm if lgbm != 'cpu' else 'CPU (installed build has no GPU support)'}"
    return Device("cuda" if xgb_cuda else "cpu", "cuda" if xgb_cuda else "cpu", lgbm, reason)


# ------------------------------------------------------------------- models
class ChangeRegressor(RegressorMixin, BaseEstimator):
    """Gradient boosting on the change from the anchor column (last year's enrollment).

    A Huber loss (delta 2 students) behaves like absolute error on the heavy tails of
    closures and openings: on the synthetic census squared error lost to persistence.
    """

    def __init__(self, library: str = "lightgbm", anchor: int = 0, settings: ModelSettings | None = None,
                 device: str = "cpu", n_jobs: int = 2):
        self.library = library
        self.anchor = anchor
        self.settings = settings
        self.device = device
        self.n_jobs = n_jobs

    def booster_params(self) -> dict:
        """Keyword arguments of the library's scikit-learn estimator (also its Dask twin's)."""
        s = self.settings or ModelSettings()
        if self.library == "lightgbm":
            return dict(
                n_estimators=s.n_estimators, learning_rate=s.learning_rate, num_leaves=s.num_leaves,
                min_child_samples=s.min_child_samples, subsample=s.subsample, subsample_freq=1,
                colsample_bytree=s.colsample, objective="huber", alpha=2.0, random_state=s.seed,
                n_jobs=self.n_jobs, device_type=self.device, verbose=-1, max_bin=s.max_bin,
            )
        if self.library == "xgboost":
            return dict(
                n_estimators=s.n_estimators, learning_rate=s.learning_rate, max_depth=s.max_depth,
                subsample=s.subsample, colsample_bytree=s.colsample, objective="reg:pseudohubererror",
                huber_slope=2.0, tree_method="hist", device=self.device, random_state=s.seed, n_jobs=self.n_jobs,
                max_bin=s.max_bin,
            )
        raise ValueError(f"unknown library {self.library!r}")

    def _booster(self):
        if self.library == "lightgbm":
            import lightgbm as lgb

            return lgb.LGBMRegressor(**self.booster_params())
        import xgboost as xgb

        return xgb.XGBRegressor(**self.booster_params())

    def _change(self, X, y):
        """Training target: next year's change from the anchor."""
        return y - np.nan_to_num(X[:, self.anchor])

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        self.model_ = self._booster()
        self.model_.fit(X, self._change(X, np.asarray(y, dtype=np.float64)))
        self.n_features_in_ = X.shape[1]
        return self

    def predict_change(self, X) -> np.ndarray:
        return self.model_.predict(np.asarray(X, dtype=np.float32))

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return np.maximum(np.nan_to_num(X[:, self.anchor]) + self.predict_change(X), 0.0)


class Persistence(RegressorMixin, BaseEstimator):
    """Next year = this year."""

    def __init__(self, anchor: int = 0):
        self.anchor = anchor

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        return np.nan_to_num(np.asarray(X, dtype=np.float64)[:, self.anchor])


class Drift(RegressorMixin, BaseEstimator):
    """This year times the stage's aggregate change in the most recent year of training
    data (closures and stage drops included)."""

    def __init__(self, anchor: int = 0):
        self.anchor = anchor

    def fit(self, X, y):
        base = np.nan_to_num(np.asarray(X, dtype=np.float64)[:, self.anchor])
        self.ratio_ = float(np.sum(y) / np.sum(base)) if np.sum(base) > 0 else 1.0
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        return np.nan_to_num(np.asarray(X, dtype=np.float64)[:, self.anchor]) * self.ratio_


class Voting(RegressorMixin, BaseEstimator):
    """The mean of already fitted models' predictions (no further fit)."""

    def __init__(self, estimators: list | None = None):
        self.estimators = estimators

    def fit(self, X=None, y=None):
        return self

    def predict(self, X) -> np.ndarray:
        return np.mean([est.predict(X) for est in self.estimators], axis=0)
