"""Saved models: native booster files plus metadata (features, versions, training years,
calibration tables), so `predict` can forecast from a newer census without retraining,
and refuses when what it would feed the models does not match what they learned from.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from censo_forecast import atomic, boosters, models
from censo_forecast.features import FEATURES
from censo_forecast.validation import ANCHOR_INDEX

FORMAT_VERSION = 1
METADATA = "metadata.json"


class ModelStoreError(Exception):
    """Saved models that cannot be used here; the message says what does not match."""


@dataclass
class SavedModels:
    """What a saved-models folder holds: per stage the fitted model, its name and its
    calibration table (None when it was not validated), and the training years."""

    models: dict
    chosen: dict[str, str]
    calibration: dict[str, pl.DataFrame]
    training_years: list[int]


def _version(name: str) -> str:
    return importlib.metadata.version(name)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def save(folder: Path, saved: SavedModels) -> Path:
    """Write native booster files, calibration tables and metadata.json (last: the folder
    is complete once it exists)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages = {}
    for flag, model in saved.models.items():
        entry: dict = {"modelo": saved.chosen[flag], "files": {}}
        members = model.estimators if isinstance(model, models.Voting) else [model]
        for member in members:
            if isinstance(member, models.ChangeRegressor):
                path = folder / f"{flag}_{member.learner}.{member.adapter.suffix}"
                with atomic.atomic_path(path) as tmp:
                    member.adapter.save(member.booster_, tmp)
                entry["files"][member.learner] = path.name
        if isinstance(model, models.Drift):
            entry["drift_ratio"] = model.ratio_
        calibration = saved.calibration.get(flag)
        if calibration is not None:
            atomic.write_parquet(folder / f"calibration_{flag}.parquet", calibration)
            entry["calibration"] = f"calibration_{flag}.parquet"
        stages[flag] = entry
    meta = {
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": list(FEATURES),
        "versions": {name: _version(name) for name in ("censo-forecast", *_packages(), "polars")},
        "training_years": saved.training_years,
        "stages": stages,
    }
    atomic.write_json(folder / METADATA, meta)
    return folder


def _packages() -> list[str]:
    return [boosters.adapter(name).package for name in models.LEARNERS]


def load(folder: Path) -> SavedModels:
    """The saved models of a folder; refuses mismatches with a clear message."""
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
    for package in _packages():
        saved, here = meta["versions"][package], _version(package)
        if _minor(saved) != _minor(here):
            raise ModelStoreError(f"{folder}: models saved with {package} {saved}, but {package} {here} is installed; "
                                  f"install {package}=={saved} or refit")
    out = SavedModels({}, {}, {}, meta["training_years"])
    for flag, entry in meta["stages"].items():
        out.models[flag] = _restore(folder, entry)
        out.chosen[flag] = entry["modelo"]
        if "calibration" in entry:
            out.calibration[flag] = pl.read_parquet(folder / entry["calibration"])
    return out


def _restore(folder: Path, entry: dict):
    learners = {}
    for name, file in entry["files"].items():
        est = models.ChangeRegressor(name, ANCHOR_INDEX)
        learners[name] = est.set_booster(est.adapter.load(folder / file), len(FEATURES))
    name = entry["modelo"]
    if name == models.ENSEMBLE:
        return models.Voting([learners[n] for n in models.LEARNERS])
    if name in learners:
        return learners[name]
    if name == models.DRIFT:
        drift = models.Drift(ANCHOR_INDEX)
        drift.ratio_ = entry["drift_ratio"]
        return drift
    return models.Persistence(ANCHOR_INDEX)
