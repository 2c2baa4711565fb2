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
from pathlib import Path

import polars as pl

from censo_forecast import atomic, runlog
from censo_forecast.config import Settings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import catalog, ingest
from censo_forecast.validation import StageCV, summarize

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
RESULTS = "resultados_finais.csv"
CV_PREDICTIONS = "cv_predictions.parquet"
METADATA = "run_metadata.json"


class PipelineError(Exception):
    """A run that cannot go on; the message says which step and why."""


def ensure_raw(s: Settings) -> list[int]:
    """Years available locally after fetching what is missing (unless offline)."""
    present = ingest.raw_zips(s.raw_dir)
    if not s.offline:
        from censo_forecast.inep import download as dl

        wanted = s.years
        if wanted is None or any(y not in present for y in wanted):
            opts = dl.DownloadOptions(base_url=s.base_url, listing_url=s.listing_url, ca_bundle=s.ca_bundle,
                                      insecure=s.insecure, retries=s.retries, timeout_s=s.timeout_s, jobs=s.jobs)
            report = dl.download(s.raw_dir, [y for y in wanted if y not in present] if wanted else None, opts)
            if not report.ok:
                problems = [f"{y}: not offered by the server" for y in report.missing]
                problems += [f"{y}: {m}" for y, m in report.failed.items()]
                raise PipelineError("download failed for " + "; ".join(problems))
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
              "min_train_years": s.min_train_years, "device": s.device}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _load_checkpoint(folder: Path, flag: str, fingerprint: str) -> StageCV | None:
    meta = folder / f"cv_{flag}.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    if info.get("fingerprint") != fingerprint:
        return None
    try:
        return StageCV(flag, pl.read_parquet(folder / f"cv_{flag}_predictions.parquet"),
                       pl.read_parquet(folder / f"cv_{flag}_folds.parquet"), info["seconds"])
    except (OSError, pl.exceptions.PolarsError):
        return None


def _save_checkpoint(folder: Path, cv: StageCV, fingerprint: str) -> None:
    atomic.write_parquet(folder / f"cv_{cv.flag}_predictions.parquet", cv.predictions)
    atomic.write_parquet(folder / f"cv_{cv.flag}_folds.parquet", cv.folds)
    # the JSON goes last: a checkpoint counts only once all its parts are in place
    atomic.write_json(folder / f"cv_{cv.flag}.json", {"fingerprint": fingerprint, "seconds": cv.seconds})


def run(s: Settings, stop_after_stage: str | None = None) -> dict:
    """The whole job. `stop_after_stage` exists for crash-and-resume tests."""
    started = time.perf_counter()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runlog.setup_logging(out)
    checkpoints = out / "checkpoints"
    if s.fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
        log.info("--fresh: removed earlier checkpoints")
    checkpoints.mkdir(exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    years = ensure_raw(s)
    timings["download"] = time.perf_counter() - t

    t = time.perf_counter()
    report = ingest.ingest(s.raw_dir, s.cache, years, jobs=s.jobs)
    report.raise_for_failures()
    timings["ingest"] = time.perf_counter() - t

    forecaster = EnrollmentForecaster(s.stages, s.model, s.device, s.min_train_years, s.jobs)
    device = forecaster.resolve_device()
    record = runlog.run_header("run", s.to_dict(), {"years": years, "device": f"{device.name} ({device.reason})"})

    t = time.perf_counter()
    panel = forecaster.panel(ingest.load_cache(s.cache, years))
    timings["panel"] = time.perf_counter() - t

    results: list[StageCV] = []
    progress = _Progress(len(s.stages))
    for flag in s.stages:
        fingerprint = _fingerprint(s, years, flag)
        cv = _load_checkpoint(checkpoints, flag, fingerprint)
        if cv is not None:
            log.info("%s: validation resumed from checkpoint", flag)
        else:
            try:
                cv = forecaster.cross_validate_stage(panel, flag)
            except ValueError as exc:
                log.warning("%s skipped: %s", flag, exc)
                progress.update()
                continue
            _save_checkpoint(checkpoints, cv, fingerprint)
            log.info("%s: validated in %.1fs (%s)", flag, cv.seconds, catalog.stage(flag).label)
        timings[f"validate {flag}"] = cv.seconds
        results.append(cv)
        progress.update()
        if stop_after_stage == flag:
            raise KeyboardInterrupt(f"stopped after {flag} (test hook)")
    progress.close()
    if not results:
        raise PipelineError("no stage could be validated")

    folds = pl.concat([r.folds for r in results])
    summary = summarize(folds)
    atomic.write_csv(out / RESULTS, summary)
    atomic.write_parquet(out / CV_PREDICTIONS, pl.concat([r.predictions for r in results], how="diagonal"))
    timings["total"] = time.perf_counter() - started
    for step, seconds in timings.items():
        log.info("timing %-28s %8.1fs", step, seconds)
    record.update({"timings_s": {k: round(v, 2) for k, v in timings.items()}, "stages": [r.flag for r in results]})
    atomic.write_json(out / METADATA, record)
    _log_table(summary)
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
