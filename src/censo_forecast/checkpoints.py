"""Finished stages of a run, kept so that a rerun after a crash or Ctrl-C resumes.

A stage's checkpoint is its walk-forward predictions and per-year metrics (written as
soon as it is validated: the run's cv_predictions.parquet is made of these files), its
SHAP importance, and a JSON written last (a checkpoint counts only once all its parts are
in place) holding a fingerprint of the data and the settings (any change redoes the
stage) and the sha256 of each part: a damaged part is never read, the stage is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import polars as pl

from censo_forecast import atomic, outputs, storage
from censo_forecast.inep import ingest
from censo_forecast.models import ENSEMBLE, LEARNERS
from censo_forecast.validation import StageCV

log = logging.getLogger(__name__)
VERSION = 3  # 3: predictions and folds per horizon
PARTS = ("predictions", "folds", "shap")


def _record(folder: Path, flag: str) -> Path:
    """A stage's checkpoint record: written last, so its presence means the stage finished."""
    return folder / f"cv_{flag}.json"


def finished(folder: Path) -> list[str]:
    """The stages whose checkpoint record is in `folder`, sorted (what a resumed run skips)."""
    return sorted(p.stem.removeprefix("cv_") for p in Path(folder).glob(_record(Path(), "*").name))


def fingerprint(settings, years: list[int], flag: str, demography: str = "") -> str:
    """What a stage's results depend on: the zips' hashes, the settings that matter and the
    demography's digest (empty: without)."""
    data = {str(y): h for y, h in ingest.year_hashes(settings.cache, years).items()}
    record = {"v": VERSION, "flag": flag, "years": years, "data": data, "model": settings.to_dict()["model"],
              "min_train_years": settings.min_train_years, "horizons": settings.horizons, "device": settings.device,
              "shap_sample": settings.shap_sample, "engine": settings.engine, "demography": demography}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def shap_pngs(shap_dir: Path, flag: str) -> list[Path]:
    """The SHAP plots a stage's checkpoint needs (`explain` draws them)."""
    return [shap_dir / outputs.shap_png(kind, flag, m) for kind in ("summary", "bar") for m in (*LEARNERS, ENSEMBLE)]


def load(folder: Path, flag: str, fingerprint: str, shap_dir: Path) -> tuple[StageCV, pl.DataFrame] | None:
    """A stage's results and SHAP importance when its checkpoint matches; else None."""
    info = storage.read_json_dict(_record(folder, flag), f"checkpoint of {flag}")  # damaged: {}, redone
    if info.get("fingerprint") != fingerprint or not all(p.exists() for p in shap_pngs(shap_dir, flag)):
        return None
    recorded = info.get("sha256")
    hashes = recorded if isinstance(recorded, dict) else {}
    parts = {}
    for part in PARTS:
        path = _part(folder, flag, part)
        try:
            intact = path.exists() and storage.sha256(path) == hashes.get(part)
        except OSError:
            intact = False
        if not intact:
            log.warning("checkpoint %s is missing or damaged (not the file written); %s will be redone", path, flag)
            return None
        parts[part] = pl.read_parquet(path)
    seconds = info.get("seconds")
    if not isinstance(seconds, (int, float)):
        return None
    return StageCV(flag, parts["predictions"], parts["folds"], float(seconds)), parts["shap"]


def _part(folder: Path, flag: str, part: str) -> Path:
    return folder / f"cv_{flag}_{part}.parquet"


def predictions_file(folder: Path, flag: str) -> Path:
    """The stage's walk-forward predictions, as `save_predictions` wrote them."""
    return _part(folder, flag, "predictions")


def save_predictions(folder: Path, cv: StageCV) -> None:
    """A validated stage's predictions and metrics; the checkpoint counts once `commit` adds the rest."""
    atomic.write_parquet(_part(folder, cv.flag, "predictions"), cv.predictions)
    atomic.write_parquet(_part(folder, cv.flag, "folds"), cv.folds)


def save_derived(folder: Path, cv: StageCV) -> None:
    """A stage derived from its parts (`coherence.walk_forward`): its predictions and metrics
    for the run's files, without a record (never resumed: derived again in seconds); an
    earlier run's record of it, fitted on its own, removed."""
    _record(folder, cv.flag).unlink(missing_ok=True)
    save_predictions(folder, cv)


def commit(folder: Path, cv: StageCV, importance: pl.DataFrame, fingerprint: str) -> None:
    """The SHAP part, then the JSON that makes the stage's checkpoint count."""
    atomic.write_parquet(_part(folder, cv.flag, "shap"), importance)
    hashes = {part: storage.sha256(_part(folder, cv.flag, part)) for part in PARTS}
    atomic.write_json(_record(folder, cv.flag), {"fingerprint": fingerprint, "seconds": cv.seconds, "sha256": hashes})
