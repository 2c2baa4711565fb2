"""Saved models: native booster files plus metadata (features, versions, training years,
calibration tables), so `predict` can forecast from a newer census without retraining,
and refuses when what it would feed the models does not match what they learned from.
"""

from __future__ import annotations

import importlib.metadata
import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from censo_forecast import atomic, models
from censo_forecast.features import FEATURES
from censo_forecast.validation import ANCHOR_INDEX

FORMAT_VERSION = 1
METADATA = "metadata.json"
_LIBRARIES = ("lightgbm", "xgboost")


class ModelStoreError(Exception):
    """Saved models that cannot be used here; the message says what does not match."""


def _version(name: str) -> str:
    return importlib.metadata.version(name)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def save(forecaster, folder: Path, training_years: list[int]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages = {}
    for flag, model in forecaster.models_.items():
        name = forecaster.chosen_[flag]
        entry: dict = {"modelo": name, "files": {}}
        members = model.estimators if isinstance(model, models.Voting) else [model]
        for member in members:
            if isinstance(member, models.ChangeRegressor):
                label = "LightGBM" if member.library == "lightgbm" else "XGBoost"
                path = folder / f"{flag}_{label}.{'txt' if label == 'LightGBM' else 'json'}"
                with atomic.atomic_path(path) as tmp:
                    if label == "LightGBM":
                        member.model_.booster_.save_model(str(tmp))
                    else:
                        member.model_.get_booster().save_model(str(tmp.with_suffix(".json")))
                        tmp.with_suffix(".json").replace(tmp)
                entry["files"][label] = path.name
        if isinstance(model, models.Drift):
            entry["drift_ratio"] = model.ratio_
        calibration = forecaster.calibration_.get(flag)
        if calibration is not None:
            atomic.write_parquet(folder / f"calibration_{flag}.parquet", calibration)
            entry["calibration"] = f"calibration_{flag}.parquet"
        stages[flag] = entry
    meta = {
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": list(FEATURES),
        "versions": {name: _version(name) for name in ("censo-forecast", *_LIBRARIES, "polars")},
        "training_years": training_years,
        "stages": stages,
    }
    atomic.write_json(folder / METADATA, meta)  # last: the folder is complete once this exists
    return folder


def load(folder: Path):
    """A fitted EnrollmentForecaster from a saved folder; refuses mismatches with a clear message."""
    from censo_forecast.forecaster import EnrollmentForecaster

    folder = Path(folder)
    path = folder / METADATA
    if not path.exists():
        raise ModelStoreError(f"{path} not found: not a saved-models folder (run `censo-forecast run` first)")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelStoreError(f"{folder}: model format {meta.get('format_version')} is not {FORMAT_VERSION}; refit with this version")
    if meta["features"] != list(FEATURES):
        missing = sorted(set(meta["features"]) - set(FEATURES))
        extra = sorted(set(FEATURES) - set(meta["features"]))
        raise ModelStoreError(f"{folder}: the models were trained on other feature columns (missing here: {missing}; new here: {extra}); refit")
    for lib in _LIBRARIES:
        saved, here = meta["versions"][lib], _version(lib)
        if _minor(saved) != _minor(here):
            raise ModelStoreError(f"{folder}: models saved with {lib} {saved}, but {lib} {here} is installed; "
                                  f"install {lib}=={saved} or refit")
    fc = EnrollmentForecaster(stages=list(meta["stages"]), device="cpu")
    fc.models_, fc.chosen_, fc.calibration_ = {}, {}, {}
    for flag, entry in meta["stages"].items():
        fc.models_[flag] = _restore(folder, entry)
        fc.chosen_[flag] = entry["modelo"]
        if "calibration" in entry:
            fc.calibration_[flag] = pl.read_parquet(folder / entry["calibration"])
    fc.training_years_ = meta["training_years"]
    return fc


def _restore(folder: Path, entry: dict):
    import lightgbm as lgb
    import xgboost as xgb

    learners = {}
    for label, name in entry["files"].items():
        est = models.ChangeRegressor(label.lower(), ANCHOR_INDEX)
        if label == "LightGBM":
            est.model_ = lgb.Booster(model_file=str(folder / name))
        else:
            est.model_ = xgb.XGBRegressor()
            est.model_.load_model(str(folder / name))
        est.n_features_in_ = len(FEATURES)
        learners[label] = est
    name = entry["modelo"]
    if name == models.ENSEMBLE:
        return models.Voting([learners["LightGBM"], learners["XGBoost"]])
    if name in learners:
        return learners[name]
    if name == "Deriva":
        drift = models.Drift(ANCHOR_INDEX)
        drift.ratio_ = entry["drift_ratio"]
        return drift
    return models.Persistence(ANCHOR_INDEX)
