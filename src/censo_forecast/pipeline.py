"""`run`: download -> ingest -> panel -> features -> walk-forward validation -> outputs.

Each finished stage is checkpointed in OUT/checkpoints with a fingerprint of the data
and settings, so a rerun after a crash or Ctrl-C resumes without redoing it; `fresh`
starts over. Every output is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import polars as pl

from censo_forecast import atomic, explain, forecast, modelstore, report, runlog, storage
from censo_forecast.models import ENSEMBLE, LEARNERS
from censo_forecast.config import Settings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import catalog, ingest
from censo_forecast.validation import StageCV

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
RESULTS = "resultados_finais.csv"
CV_PREDICTIONS = "cv_predictions.parquet"
METADATA = "run_metadata.json"
COVERAGE = "cobertura_intervalos_cv.csv"


class PipelineError(Exception):
    """A run that cannot go on; the message says which step and why."""


def download_options(s: Settings):
    """The downloader's options from the settings ('none' as listing URL: no discovery)."""
    from censo_forecast.inep import download as dl

    listing = None if (s.listing_url or "").lower() == "none" else s.listing_url
    return dl.DownloadOptions(base_url=s.base_url, listing_url=listing, ca_bundle=s.ca_bundle, insecure=s.insecure,
                              retries=s.retries, timeout_s=s.timeout_s, jobs=s.jobs)


def ensure_raw(s: Settings) -> list[int]:
    """Years available locally after fetching what is missing (unless offline)."""
    present = ingest.raw_zips(s.raw_dir)
    if not s.offline:
        from censo_forecast.inep import download as dl

        wanted = s.years
        if storage.local_path(s.raw_dir) is None:  # a remote store: fill it with `download` + a copy
            if wanted is None or any(y not in present for y in wanted):
                raise PipelineError(f"cannot download into {s.raw_dir}: download to a local folder, copy the zips "
                                    "there, and run with --offline")
        elif wanted is None or any(y not in present for y in wanted):
            fetched = dl.download(s.raw_dir, [y for y in wanted if y not in present] if wanted else None, download_options(s))
            if not fetched.ok:
                raise PipelineError("download failed for " + "; ".join(fetched.problems()))
        present = ingest.raw_zips(s.raw_dir)
    years = s.years if s.years is not None else sorted(present)
    missing = [y for y in years if y not in present]
    if missing:
        raise PipelineError(f"no census zip for {missing} in {s.raw_dir} (run without --offline to download)")
    if len(years) <= s.min_train_years:
        raise PipelineError(f"walk-forward validation needs more than {s.min_train_years} census years; have {years}")
    return years


def _fingerprint(s: Settings, years: list[int], flag: str) -> str:
    manifest = json.loads((s.cache / ingest.MANIFEST).read_text())
    data = {str(y): manifest[str(y)]["sha256"] for y in years}
    record = {"v": CHECKPOINT_VERSION, "flag": flag, "years": years, "data": data, "model": s.to_dict()["model"],
              "min_train_years": s.min_train_years, "device": s.device, "shap_sample": s.shap_sample, "engine": s.engine}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _shap_pngs(shap_dir: Path, flag: str) -> list[Path]:
    return [shap_dir / f"SHAP_{kind}_{flag}_{m}.png" for kind in ("summary", "bar") for m in (*LEARNERS, ENSEMBLE)]


def _load_checkpoint(folder: Path, flag: str, fingerprint: str, shap_dir: Path) -> tuple[StageCV, pl.DataFrame] | None:
    meta = folder / f"cv_{flag}.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    if info.get("fingerprint") != fingerprint or not all(p.exists() for p in _shap_pngs(shap_dir, flag)):
        return None
    try:
        cv = StageCV(flag, pl.read_parquet(folder / f"cv_{flag}_predictions.parquet"),
                     pl.read_parquet(folder / f"cv_{flag}_folds.parquet"), info["seconds"])
        return cv, pl.read_parquet(folder / f"cv_{flag}_shap.parquet")
    except (OSError, pl.exceptions.PolarsError):
        return None


def _save_checkpoint(folder: Path, cv: StageCV, importance: pl.DataFrame, fingerprint: str) -> None:
    atomic.write_parquet(folder / f"cv_{cv.flag}_predictions.parquet", cv.predictions)
    atomic.write_parquet(folder / f"cv_{cv.flag}_folds.parquet", cv.folds)
    atomic.write_parquet(folder / f"cv_{cv.flag}_shap.parquet", importance)
    # the JSON goes last: a checkpoint counts only once all its parts are in place
    atomic.write_json(folder / f"cv_{cv.flag}.json", {"fingerprint": fingerprint, "seconds": cv.seconds})


def _ingest(s: Settings, years: list[int], engine=None) -> None:
    if engine is not None:
        engine.ingest(s.raw_dir, years).raise_for_failures()
    else:
        ingest.ingest(s.raw_dir, s.cache, years, jobs=s.jobs).raise_for_failures()


@contextmanager
def cluster(s: Settings) -> Iterator:
    """A Dask client for --engine dask (a LocalCluster unless --scheduler); None for the local engine."""
    if s.engine != "dask":
        yield None
        return
    try:
        from censo_forecast.distributed import dask as dask_engine
    except ImportError as exc:
        raise PipelineError(f"--engine dask needs Dask: pip install 'censo-forecast[dask]' ({exc})") from None
    try:
        with dask_engine.connect(s.scheduler, s.workers) as client:
            log.info("dask: %s", client)
            yield client
    except RuntimeError as exc:
        if "Dask scheduler" in str(exc):
            raise PipelineError(str(exc)) from None
        raise


def _write_forecast(forecaster: EnrollmentForecaster, panel: pl.DataFrame, out: Path, seed: int) -> list[Path]:
    """Next year's school forecasts and their area totals, from a fitted forecaster."""
    schools = forecaster.predict(panel)
    return forecast.write_forecasts(out, forecaster.forecast_year_, schools, forecaster.aggregate(panel, schools, seed))


def predict(s: Settings, models_dir: Path) -> list[Path]:
    """Forecast from a (newer) census with saved models, without retraining."""
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runlog.setup_logging(out)
    forecaster = modelstore.load(models_dir)
    years = ensure_raw(s)
    _ingest(s, years)
    runlog.run_header("predict", s.to_dict(), {"models": str(models_dir), "trained_on": forecaster.training_years_, "years": years})
    written = _write_forecast(forecaster, forecaster.panel(ingest.load_cache(s.cache, years)), out, s.model.seed)
    log.info("forecast for %d from saved models: %s", forecaster.forecast_year_, ", ".join(p.name for p in written))
    return written


def run(s: Settings, stop_after_stage: str | None = None) -> dict:
    """The whole job. `stop_after_stage` exists for crash-and-resume tests."""
    with cluster(s) as client:
        return _run(s, client, stop_after_stage)


class _Clock:
    """Wall time per phase, with start offsets so that a profiler can line memory samples up."""

    def __init__(self):
        self.started = time.perf_counter()
        self.phases: list[dict] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append({"phase": name, "start_s": round(t - self.started, 3), "seconds": round(time.perf_counter() - t, 3)})

    def timings(self) -> dict[str, float]:
        return {p["phase"]: p["seconds"] for p in self.phases} | {"total": round(time.perf_counter() - self.started, 2)}


def _validate_stage(s: Settings, forecaster: EnrollmentForecaster, panel: pl.DataFrame, flag: str, clock: _Clock,
                    shap_dir: Path, shap_failures: dict) -> tuple[StageCV, pl.DataFrame | None, object] | None:
    """Features, walk-forward and SHAP of one stage; None when it has too few years."""
    with clock.phase(f"features {flag}"):
        data = forecaster.stage_data(panel, flag)
    try:
        with clock.phase(f"validate {flag}"):
            cv = forecaster.cross_validate_stage(panel, flag, data)
    except ValueError as exc:
        log.warning("%s skipped: %s", flag, exc)
        return None
    log.info("%s: validated in %.1fs (%s)", flag, cv.seconds, catalog.stage(flag).label)
    importance = None
    with clock.phase(f"shap {flag}"):
        try:
            importance = explain.explain_stage(flag, cv.last_fold, shap_dir, s.shap_sample, s.model.seed)
        except Exception as exc:  # reported at the end and in the exit code, never swallowed
            log.exception("%s: SHAP explanation failed", flag)
            shap_failures[flag] = f"{type(exc).__name__}: {exc}"
    return cv, importance, data


def _run(s: Settings, client, stop_after_stage: str | None) -> dict:
    clock = _Clock()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runlog.setup_logging(out)
    checkpoints = out / "checkpoints"
    if s.fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
        log.info("--fresh: removed earlier checkpoints")
    checkpoints.mkdir(exist_ok=True)

    with clock.phase("download"):
        years = ensure_raw(s)
    engine = None
    if client is not None:
        from censo_forecast.distributed.dask import DaskEngine

        engine = DaskEngine(client, s.cache, years)
    with clock.phase("ingest"):
        _ingest(s, years, engine)

    forecaster = EnrollmentForecaster(s.stages, s.model, s.device, s.min_train_years, s.jobs, engine)
    device = forecaster.resolve_device()
    record = runlog.run_header("run", s.to_dict(), {"years": years, "device": f"{device.name} ({device.reason})",
                                                    "engine": engine.describe() if engine else "local"})
    with clock.phase("panel"):
        panel = forecaster.panel(ingest.load_cache(s.cache, years))

    results: list[StageCV] = []
    importances: list[pl.DataFrame] = []
    shap_failures: dict[str, str] = {}
    shap_dir = out / "shap"
    progress = _Progress(len(s.stages))
    for flag in s.stages:
        fingerprint = _fingerprint(s, years, flag)
        resumed = _load_checkpoint(checkpoints, flag, fingerprint, shap_dir)
        data = None
        if resumed is not None:
            cv, importance = resumed
            log.info("%s: validation resumed from checkpoint", flag)
        else:
            validated = _validate_stage(s, forecaster, panel, flag, clock, shap_dir, shap_failures)
            if validated is None:
                progress.update()
                continue
            cv, importance, data = validated
            if importance is not None:
                _save_checkpoint(checkpoints, cv, importance, fingerprint)
        results.append(cv)
        if importance is not None:
            importances.append(importance)
        with clock.phase(f"refit {flag}"):
            forecaster.fit_stage(panel, flag, cv, data)  # the stage's features are reused, then freed
        del data
        progress.update()
        if stop_after_stage == flag:
            raise KeyboardInterrupt(f"stopped after {flag} (test hook)")
    progress.close()
    if not results:
        raise PipelineError("no stage could be validated")

    cv = forecaster.combine(results)
    summary = cv.summary
    atomic.write_csv(out / RESULTS, summary)
    atomic.write_parquet(out / CV_PREDICTIONS, cv.predictions)
    atomic.write_csv(out / COVERAGE, cv.coverage)

    with clock.phase("forecast"):
        forecaster.cv_, forecaster.stages = cv, [r.flag for r in results]
        written = _write_forecast(forecaster, panel, out, s.model.seed)
        modelstore.save(forecaster, out / "models", years)
    log.info("forecast for %d: %s; models saved in %s", forecaster.forecast_year_, ", ".join(p.name for p in written), out / "models")
    if importances:
        atomic.write_csv(shap_dir / "shap_importance.csv", pl.concat(importances))
    timings = clock.timings()
    for step, seconds in timings.items():
        log.info("timing %-28s %8.1fs", step, seconds)
    record.update({"timings_s": timings, "phases": clock.phases, "stages": [r.flag for r in results],
                   "forecast_year": forecaster.forecast_year_})
    atomic.write_json(out / METADATA, record)
    report.build_report(out)
    log.info("report: %s", out / report.REPORT)
    _log_table(summary)
    if shap_failures:
        raise PipelineError("SHAP failed for " + "; ".join(f"{k}: {v}" for k, v in shap_failures.items()))
    return record


def _log_table(summary: pl.DataFrame) -> None:
    for row in summary.filter(pl.col("Escolhido")).iter_rows(named=True):
        log.info("%-12s best %-12s MAE %8.2f  skill vs persistence %+6.1f%%", row["etapa"], row["modelo"],
                 row["MAE_Media_CV"], 100 * row["Skill_MAE_vs_Persistencia"])


class _Progress:
    """A bar over stages on a terminal; the log lines already tell the story elsewhere."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="stages", unit="stage", disable=not sys.stderr.isatty())

    def update(self) -> None:
        self.bar.update()

    def close(self) -> None:
        self.bar.close()
