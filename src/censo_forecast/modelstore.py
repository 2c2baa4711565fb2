"""Saved models: native booster files plus metadata (features, versions, training years,
calibration tables), so `predict` can forecast from a newer census without retraining,
and refuses when what it would feed the models does not match what they learned from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from censo_forecast import atomic, boosters, coherence, learners, models, storage
from censo_forecast.features import FEATURES
from censo_forecast.outputs import SUM_OF_PARTS

# 2: the sha256 of every file, checked before a native loader reads it; 3: a model per horizon;
# 4: learners with models of their own for the first years ahead ("own_files"); 6: a stage
# published as the sum of others ("parts", no files)
FORMAT_VERSION = 6
METADATA = "metadata.json"
SELF_HASH = "sha256_of_this_file"  # of the metadata without this key: a changed value is caught too


class ModelStoreError(Exception):
    """Saved models that cannot be used here; the message says what does not match."""


@dataclass
class SavedModels:
    """What a saved-models folder holds: per stage the fitted `models.ByHorizon` (or the
    `coherence.SumOfParts` it is published as), the name of
    the model chosen at each horizon and the calibration table (None when it was not
    validated), and the training years."""

    models: dict
    chosen: dict[str, dict[int, str]]
    calibration: dict[str, pl.DataFrame]
    training_years: list[int]
    demography: str | None = None  # where the births and population the models learned from came from


def _content_hash(meta: dict) -> str:
    content = {k: v for k, v in meta.items() if k != SELF_HASH}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _version(name: str) -> str:
    return importlib.metadata.version(name)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def save(folder: Path, saved: SavedModels) -> Path:
    """Write native booster files, calibration tables and metadata.json (last: the folder
    is complete once it exists)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    hashes: dict[str, str] = {}
    for flag, by_horizon in saved.models.items():
        entry: dict = {"modelos": {str(h): name for h, name in saved.chosen[flag].items()}, "files": {}}
        derived = isinstance(by_horizon, coherence.SumOfParts)  # nothing fitted: its parts are saved
        if derived:
            entry["parts"] = list(by_horizon.parts)
        for model in [] if derived else by_horizon.by_years_ahead.values():
            for member in (model.members if isinstance(model, models.Voting) else [model]):
                if isinstance(member, (models.ChangeRegressor, models.HorizonSplit)) and member.learner not in entry["files"]:
                    _save_learner(folder, flag, member, entry, hashes)
            if isinstance(model, models.Drift):
                entry["drift_ratio"] = model.ratio_
        calibration = saved.calibration.get(flag)
        if calibration is not None:
            atomic.write_parquet(folder / f"calibration_{flag}.parquet", calibration)
            entry["calibration"] = f"calibration_{flag}.parquet"
            hashes[entry["calibration"]] = storage.sha256(folder / entry["calibration"])
        stages[flag] = entry
    meta = {
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": list(FEATURES),
        "versions": {name: _version(name) for name in ("censo-forecast", *_packages(), "polars")},
        "training_years": saved.training_years,
        "demography": saved.demography,
        "stages": stages,
        "sha256": hashes,
    }
    meta[SELF_HASH] = _content_hash(meta)
    atomic.write_json(folder / METADATA, meta)
    return folder


def _save_learner(folder: Path, flag: str, learner, entry: dict, hashes: dict) -> None:
    """A learner's native booster files (a split learner's own-horizon models as `_h{years}`),
    named in the stage's entry: "files" the shared model (None when there is none), "own_files"
    {years ahead: file} of a split one."""
    parts = learner.parts() if isinstance(learner, models.HorizonSplit) else {None: learner}
    entry["files"][learner.learner] = None
    for h, part in parts.items():
        path = folder / f"{flag}_{learner.learner}{'' if h is None else f'_h{h}'}.{part.adapter.suffix}"
        with atomic.atomic_path(path) as tmp:
            part.adapter.save(part.booster_, tmp)
        hashes[path.name] = storage.sha256(path)
        if h is None:
            entry["files"][learner.learner] = path.name
        else:
            entry.setdefault("own_files", {}).setdefault(learner.learner, {})[str(h)] = path.name


def _packages() -> list[str]:
    return [boosters.adapter(name).package for name in models.LEARNERS]


def load(folder: Path) -> SavedModels:
    """The saved models of a folder; refuses mismatches with a clear message."""
    folder = Path(folder)
    path = folder / METADATA
    if not path.exists():
        raise ModelStoreError(f"{path} not found: not a saved-models folder (run `censo-forecast run` first)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelStoreError(f"{path} is damaged ({exc}); rerun `censo-forecast run` to save the models again") from None
    if not isinstance(meta, dict):
        raise ModelStoreError(f"{path} is damaged (not a JSON object); rerun `censo-forecast run` to save the models again")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelStoreError(f"{folder}: model format {meta.get('format_version')} is not {FORMAT_VERSION}; refit with this version")
    if meta.get(SELF_HASH) != _content_hash(meta):
        raise ModelStoreError(f"{path} is damaged (its content does not match the hash recorded when it was saved); "
                              "rerun `censo-forecast run` to save the models again")
    shapes = {"features": list, "versions": dict, "training_years": list, "stages": dict, "sha256": dict}
    wrong = [k for k, kind in shapes.items() if not isinstance(meta.get(k), kind)]
    if wrong or not all(isinstance(e, dict) and isinstance(e.get("files", {}), dict) for e in meta["stages"].values()):
        raise ModelStoreError(f"{path} is damaged (entries {wrong or ['stages']} are not what run writes); "
                              "rerun `censo-forecast run` to save the models again")
    if meta["features"] != list(FEATURES):
        missing = sorted(set(meta["features"]) - set(FEATURES))
        extra = sorted(set(FEATURES) - set(meta["features"]))
        raise ModelStoreError(
            f"{folder}: the models were trained on other feature columns (missing here: {missing}; new here: {extra}); refit"
        )
    for package in _packages():
        saved, here = meta["versions"][package], _version(package)
        if _minor(saved) != _minor(here):
            raise ModelStoreError(f"{folder}: models saved with {package} {saved}, but {package} {here} is installed; "
                                  f"install {package}=={saved} or refit")
    out = SavedModels({}, {}, {}, meta["training_years"], meta.get("demography"))
    for flag, entry in meta["stages"].items():
        out.models[flag] = _parts(folder, entry, meta["stages"]) if "parts" in entry else _restore(folder, entry, meta["sha256"])
        out.chosen[flag] = _chosen(folder, entry)
        if "calibration" in entry:
            out.calibration[flag] = pl.read_parquet(_verified(folder, entry["calibration"], meta["sha256"]))
    return out


def _verified(folder: Path, name, hashes: dict) -> Path:
    """A file the metadata names: a plain name inside the folder, and the very file that was
    saved (its sha256), before any reader, native ones included, sees it."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ModelStoreError(f"{folder / METADATA} names {name!r}: not a file of the models folder; refused")
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ModelStoreError(f"{folder / METADATA} names {name!r}, which lies outside {folder}; refused")
    if not path.is_file():
        raise ModelStoreError(f"{path} is missing; rerun `censo-forecast run` to save the models again")
    if storage.sha256(path) != hashes.get(name):
        raise ModelStoreError(f"{path} is damaged (its sha256 is not the one recorded when it was saved); "
                              "rerun `censo-forecast run` to save the models again")
    return path


def _damaged(folder: Path, entry) -> ModelStoreError:
    return ModelStoreError(f"{folder / METADATA}: a stage's entry is damaged ({str(entry)[:120]}); "
                           "rerun `censo-forecast run` to save the models again")


def _chosen(folder: Path, entry: dict) -> dict[int, str]:
    """{years ahead: model name} of a stage's entry."""
    chosen = entry.get("modelos")
    if not isinstance(chosen, dict) or not chosen or not all(
            isinstance(k, str) and k.isdigit() and int(k) >= 1 and v in (*models.MODEL_NAMES, SUM_OF_PARTS)
            for k, v in chosen.items()):
        raise _damaged(folder, entry)
    return {int(h): name for h, name in sorted(chosen.items(), key=lambda kv: int(kv[0]))}


def _parts(folder: Path, entry: dict, stages: dict) -> coherence.SumOfParts:
    """A stage published as the sum of saved stages: its parts must be saved, as models of their own."""
    parts = entry["parts"]
    if not isinstance(parts, list) or not parts or not all(
            isinstance(p, str) and isinstance(stages.get(p), dict) and "parts" not in stages[p] for p in parts):
        raise _damaged(folder, entry)
    if set(_chosen(folder, entry).values()) != {SUM_OF_PARTS}:
        raise _damaged(folder, entry)
    return coherence.SumOfParts(tuple(parts))


def _restore(folder: Path, entry: dict, hashes: dict) -> models.ByHorizon:
    fitted = {}
    own_files = entry.get("own_files", {})
    if not isinstance(own_files, dict) or not all(
            isinstance(files, dict) and all(isinstance(h, str) and h.isdigit() for h in files) for files in own_files.values()):
        raise _damaged(folder, entry)
    for name, file in entry["files"].items():
        if name not in models.LEARNERS:
            raise ModelStoreError(f"{folder / METADATA}: unknown learner {name!r}")
        adapter = boosters.adapter(name)
        own = {int(h): adapter.load(_verified(folder, f, hashes)) for h, f in own_files.get(name, {}).items()}
        if file is None and not own:
            raise _damaged(folder, entry)
        shared = None if file is None else adapter.load(_verified(folder, file, hashes))
        fitted[name] = learners.restore_learner(name, shared, own)
    fitted = learners.with_ensemble(fitted)
    by_horizon = {}
    for h, name in _chosen(folder, entry).items():
        if name in models.BASELINES:
            if name == models.DRIFT and not isinstance(entry.get("drift_ratio"), (int, float)):
                raise _damaged(folder, entry)
            by_horizon[h] = learners.restore_baseline(name, entry.get("drift_ratio"))
        elif name in fitted:
            by_horizon[h] = fitted[name]
        else:
            raise _damaged(folder, entry)
    return learners.by_horizon(by_horizon)
