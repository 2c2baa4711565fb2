"""One adapter per gradient-boosting library: the only place that knows LightGBM's or
XGBoost's API (parameters, fit, prediction, SHAP contributions, files and the GPU probe).
Everything else names a learner by its display name ("LightGBM") and asks `adapter(name)`;
the Dask twins live with the Dask engine (`distributed/dask.py`).

A fitted learner is always the library's native booster (`lightgbm.Booster`,
`xgboost.Booster`), whether it was just trained, trained on a Dask cluster or loaded
from a file, so saving, explaining and predicting never depend on where it came from.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from censo_forecast.config import ModelSettings

HUBER_DELTA = 2.0  # students: the Huber loss behaves like absolute error beyond this
# OpenMP threads of LightGBM and XGBoost spin while they wait, which on a shared machine
# steals the cores other processes need (benchmarks/README.md, "busy machine"): passive
# waiting, unless the user set a policy. OpenMP reads it once, when a library loads it.
OPENMP_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}


def library(package: str) -> ModuleType:
    """A boosting library, imported with OpenMP's passive wait (unless the user chose a policy)."""
    for key, value in OPENMP_WAIT.items():
        os.environ.setdefault(key, value)
    return importlib.import_module(package)


class BoosterAdapter(Protocol):
    """What every library's adapter does. `contributions` gives n x (features + 1): SHAP
    values, then the base value; `predict` keeps the library's own float type (results stay
    bit-identical); `gpu_device` is this build's GPU device value, or None."""

    name: str  # display name, as in resultados_finais.csv
    package: str  # distribution name, for version checks
    suffix: str  # saved model file extension

    def params(self, settings: ModelSettings, device: str, n_jobs: int) -> dict: ...
    def fit(self, X: np.ndarray, target: np.ndarray, params: dict): ...
    def predict(self, booster, X: np.ndarray) -> np.ndarray: ...
    def contributions(self, booster, X: np.ndarray) -> np.ndarray: ...
    def save(self, booster, path: Path) -> None: ...
    def load(self, path: Path): ...
    def gpu_device(self) -> str | None: ...


class LightGBMAdapter:
    name, package, suffix = "LightGBM", "lightgbm", "txt"

    def params(self, settings: ModelSettings, device: str, n_jobs: int) -> dict:
        s = settings
        # On the CPU, row-wise histograms: the same model as LightGBM's own choice (col-wise here),
        # fitted 21 % faster on a national fold with passive waiting (benchmarks/threads.py)
        cpu = {"force_row_wise": True} if device == "cpu" else {}
        return dict(
            n_estimators=s.n_estimators, learning_rate=s.learning_rate, num_leaves=s.num_leaves,
            min_child_samples=s.min_child_samples, subsample=s.subsample, subsample_freq=1,
            colsample_bytree=s.colsample, objective="huber", alpha=HUBER_DELTA, random_state=s.seed,
            n_jobs=n_jobs, device_type=device, verbose=-1, max_bin=s.max_bin, **cpu,
        )

    def fit(self, X, target, params):
        lgb = library("lightgbm")

        return lgb.LGBMRegressor(**params).fit(X, target).booster_

    def predict(self, booster, X):
        return booster.predict(X)

    def contributions(self, booster, X):
        return np.asarray(booster.predict(X, pred_contrib=True), dtype=np.float64)

    def save(self, booster, path):
        booster.save_model(str(path))

    def load(self, path):
        lgb = library("lightgbm")

        return lgb.Booster(model_file=str(path))

    def gpu_device(self):
        lgb = library("lightgbm")

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


class XGBoostAdapter:
    name, package, suffix = "XGBoost", "xgboost", "json"

    def params(self, settings: ModelSettings, device: str, n_jobs: int) -> dict:
        s = settings
        return dict(
            n_estimators=s.n_estimators, learning_rate=s.learning_rate, max_depth=s.max_depth,
            subsample=s.subsample, colsample_bytree=s.colsample, objective="reg:pseudohubererror",
            huber_slope=HUBER_DELTA, tree_method="hist", device=device, random_state=s.seed, n_jobs=n_jobs,
            max_bin=s.max_bin,
        )

    def fit(self, X, target, params):
        xgb = library("xgboost")

        return xgb.XGBRegressor(**params).fit(X, target).get_booster()

    def predict(self, booster, X):
        return booster.inplace_predict(X)  # float32, as XGBRegressor.predict gives it

    def contributions(self, booster, X):
        xgb = library("xgboost")

        # runs on the GPU when the model was trained there
        return np.asarray(booster.predict(xgb.DMatrix(X, missing=np.nan), pred_contribs=True), dtype=np.float64)

    def save(self, booster, path):
        Path(path).write_bytes(bytes(booster.save_raw(raw_format="json")))  # JSON whatever the file's name

    def load(self, path):
        xgb = library("xgboost")

        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster

    def gpu_device(self):
        xgb = library("xgboost")

        return "cuda" if xgb.build_info().get("USE_CUDA") else None


ADAPTERS: dict[str, BoosterAdapter] = {a.name: a for a in (LightGBMAdapter(), XGBoostAdapter())}
LEARNERS: tuple[str, ...] = tuple(ADAPTERS)


def adapter(name: str) -> BoosterAdapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; known: {', '.join(ADAPTERS)}") from None
