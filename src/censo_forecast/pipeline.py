"""`run` and `predict`: download -> ingest -> panel -> features -> validation -> outputs.

`run` is a sequence of named steps (`Run.execute`); the stages go through the same loop as
`EnrollmentForecaster.fit` (`runner`), with the run's own steps added around each stage
(`Run` is the loop's `Hooks`): each validated stage is checkpointed (`checkpoints`), so a
rerun after a crash or Ctrl-C resumes without redoing it, and `fresh` starts over; SHAP
explains it; its forecast is made from the rows in hand. Every output is written atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from censo_forecast import atomic, checkpoints, coherence, explain, forecast, municipal, outputs, report, runlog, storage
from censo_forecast.config import Settings
from censo_forecast.demography import known, tables
from censo_forecast.demography.tables import Demography
from censo_forecast.engine import Engine, open_engine
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import ingest
from censo_forecast.outputs import CHOSEN, MAE_MEAN, MODEL, SKILL_VS_PERSISTENCE, STAGE
from censo_forecast.panel import YEAR, build_panel
from censo_forecast.results import CVResult
from censo_forecast.runner import Hooks, StageFit, unvalidated
from censo_forecast.validation import CannotValidate, StageCV

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """A run that cannot go on; the message says which step and why."""


def download_options(s: Settings):
    """The downloader's options from the settings ('none' as listing URL: no discovery)."""
    from censo_forecast.inep import download as dl

    listing = None if (s.listing_url or "").lower() == "none" else s.listing_url
    return dl.DownloadOptions(base_url=s.base_url, listing_url=listing, ca_bundle=s.ca_bundle, insecure=s.insecure,
                              retries=s.retries, timeout_s=s.timeout_s, jobs=s.threads)


def ensure_raw(s: Settings) -> list[int]:
    """Years available in the raw folder after fetching what is missing (unless offline)."""
    present = ingest.raw_zips(s.raw_dir)
    wanted = s.years
    if not s.offline and (wanted is None or any(y not in present for y in wanted)):
        from censo_forecast.inep import download as dl

        if storage.local_path(s.raw_dir) is None:  # a remote store: fill it with `download` + a copy
            raise PipelineError(f"cannot download into {s.raw_dir}: download to a local folder, copy the zips "
                                "there, and run with --offline")
        fetched = dl.download(s.raw_dir, [y for y in wanted if y not in present] if wanted else None, download_options(s))
        if not fetched.ok:
            raise PipelineError("download failed for " + "; ".join(fetched.problems()))
        present = ingest.raw_zips(s.raw_dir)
    years = wanted if wanted is not None else sorted(present)
    missing = [y for y in years if y not in present]
    if missing:
        raise PipelineError(f"no census zip for {missing} in {s.raw_dir} (run without --offline to download)")
    if not years:
        raise PipelineError(f"no census zips (microdados_censo_escolar_YYYY.zip) in {s.raw_dir}")
    return years


def writable_folder(out: Path) -> Path:
    """The output folder, created if needed, after checking it can be written to: a folder that
    is a file or read-only is a one-line message, before any work."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except FileExistsError:
        raise PipelineError(f"--out {out} is a file, not a folder; choose a folder for the outputs") from None
    except OSError as exc:
        raise PipelineError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a folder you can write to") from None
    return out


def load_demography(s: Settings) -> Demography | None:
    """The births and population of `--demography`, read and checked before any other work;
    without them the run says so once and goes on as before."""
    if s.demography is None:
        log.info("demography: none given (--demography DIR); forecasting from the census alone")
        return None
    try:
        demography = tables.read_folder(s.demography)
    except tables.DemographyError as exc:
        raise PipelineError(str(exc)) from None
    log.info("demography: %s", demography.describe())
    return demography


def _ingest(s: Settings, engine: Engine, years: list[int]) -> None:
    engine.ingest(s.raw_dir, s.cache, years, jobs=s.threads).raise_for_failures()  # holds the cache (ingest.cache_lock)


def forecast_years(forecaster: EnrollmentForecaster, panel: pl.DataFrame) -> list[int]:
    """The years after the panel's last census year that the forecaster forecasts."""
    last = panel.select(pl.col(YEAR).max()).item()
    return [last + h for h in range(1, forecaster.horizons + 1)]


def _write_forecast(forecaster: EnrollmentForecaster, panel: pl.DataFrame, schools: pl.DataFrame, out: Path,
                    seed: int, births: dict[str, municipal.Choice] | None = None) -> list[Path]:
    """Each forecast year's school forecasts and area totals, from a fitted forecaster (`births`:
    as `EnrollmentForecaster.aggregate`); forecast files of other years (an earlier run's, with
    more horizons or another census) are removed."""
    areas = forecaster.aggregate(panel, schools, seed=seed, births=births)
    written = []
    for year in forecast_years(forecaster, panel):
        written += forecast.write_forecasts(out, year, schools.filter(pl.col(YEAR) == year), areas[year])
    kept = set(written)
    stale = sorted(p for p in out.glob(outputs.forecast_file("[0-9][0-9][0-9][0-9]", suffix="") + "*") if p not in kept)
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d forecast file(s) of an earlier run: %s", len(stale), ", ".join(p.name for p in stale))
    return written


def mark_incomplete(out: Path, command: str) -> None:
    """OUT/EXECUCAO_INCOMPLETA.txt, until the command's record is written (`outputs.INCOMPLETE`)."""
    atomic.write_text(out / outputs.INCOMPLETE,
                      f"censo-forecast {command} started writing this folder at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"(process {os.getpid()}) and has not finished. If no command is running, it stopped before the "
                      f"end: its files may mix with an earlier run's. Rerun the same command to finish it.\n")


def _years_text(years: list[int]) -> str:
    return f"{years[0]}-{years[-1]}" if len(years) > 1 else str(years[0])


def predict(s: Settings, models_dir: Path) -> list[Path]:
    """Forecast from a (newer) census with saved models, without retraining."""
    out = writable_folder(s.out_dir)
    if (out / outputs.METADATA).exists():
        raise PipelineError(f"--out {out} holds a run's outputs ({outputs.METADATA}); predict would replace its forecasts "
                            "and mix the two: choose a folder of its own")
    with _locked(out, "predict"):
        runlog.setup_logging(out)
        forecaster = EnrollmentForecaster.load(models_dir)
        demography = load_demography(s)
        if forecaster.trained_with_demography_ and demography is None:
            raise PipelineError(f"the models in {models_dir} learned from births and population "
                                f"({forecaster.trained_with_demography_}); pass --demography DIR with the same files")
        forecaster.demography = demography
        years = ensure_raw(s)
        with open_engine(s) as engine:
            _ingest(s, engine, years)
        runlog.run_header("predict", s.to_dict(), {"models": str(models_dir), "trained_on": forecaster.training_years_, "years": years})
        _check_predict_years(forecaster, years, s)
        panel = known.attach(build_panel(ingest.load_cache(s.cache, years, s.raw_dir)), demography)
        mark_incomplete(out, "predict")
        written = _write_forecast(forecaster, panel, forecaster.predict(panel), out, s.model.seed)
        (out / outputs.INCOMPLETE).unlink()
    log.info("forecast for %s from saved models: %d files", _years_text(forecast_years(forecaster, panel)), len(written))
    return written


def _check_predict_years(forecaster: EnrollmentForecaster, years: list[int], s: Settings) -> None:
    """The census a prediction reads: it must reach the models' last training year (else they
    would forecast years they were trained on) and start at their first (a school's first
    year and largest enrollment are features that read every earlier year)."""
    trained = forecaster.training_years_
    if max(years) < max(trained):
        raise PipelineError(f"the census in {s.raw_dir} ends in {max(years)}, before {max(trained)}, the models' last "
                            f"training year: they would forecast years they were trained on; give census years up to "
                            f"{max(trained)} or later")
    if min(years) > min(trained):
        raise PipelineError(f"--years starts in {min(years)}, but the models' features read every census year from "
                            f"{min(trained)} (a school's first year, its largest enrollment): give {min(trained)}-{max(years)} "
                            "or leave --years out")


@contextmanager
def _locked(out: Path, command: str) -> Iterator[None]:
    """One command at a time per output folder (a second stops with the holder's pid)."""
    try:
        with atomic.folder_lock(out, f"censo-forecast {command}"):
            yield
    except atomic.FolderBusy as exc:
        raise PipelineError(str(exc)) from None


def run(s: Settings) -> dict:
    """The whole job; returns the run record (also written to run_metadata.json)."""
    out = writable_folder(s.out_dir)
    with _locked(out, "run"), open_engine(s) as engine:
        return Run(s, engine).execute()


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


class Run(Hooks):
    """One `run`, step by step; each step's name says what it does. As the stage loop's hooks
    it resumes stages from checkpoints, explains and checkpoints them, and forecasts them."""

    def __init__(self, s: Settings, engine: Engine):
        self.s, self.engine = s, engine
        self.out = Path(s.out_dir)
        self.clock = _Clock()
        self.checkpoints = self.out / outputs.CHECKPOINTS
        self.shap_dir = self.out / outputs.SHAP
        self.importances: list[pl.DataFrame] = []
        self.shap_failures: dict[str, str] = {}
        self.schools: list[pl.DataFrame] = []  # each stage's forecast per school, made from the rows in hand
        self.births: dict[str, municipal.Choice] = {}  # the stages' births weights, chosen once for the forecast and the record
        self.years: list[int] = []
        self.fingerprints: dict[str, str] = {}
        self.demography: Demography | None = None

    def execute(self) -> dict:
        self.prepare_output()
        self.demography = load_demography(self.s)
        self.years = self.fetch_and_ingest()
        forecaster = EnrollmentForecaster(self.s.stages, horizons=self.s.horizons, model=self.s.model, device=self.s.device,
                                          min_train_years=self.s.min_train_years, n_jobs=self.s.jobs, engine=self.engine,
                                          demography=self.demography)
        device = self.engine.select_device(self.s.device)
        record = runlog.run_header("run", self.s.to_dict(), {"years": self.years, "device": f"{device.name} ({device.reason})",
                                                             "demography": self.demography.describe() if self.demography else None,
                                                             "engine": self.engine.describe()})
        with self.clock.phase("panel"):
            panel = known.attach(build_panel(ingest.load_cache(self.s.cache, self.years, self.s.raw_dir)), self.demography)
        try:
            fits = forecaster._fit_panel(panel, hooks=self, device=device)
        except CannotValidate as exc:
            raise PipelineError(str(exc)) from None
        cv = self.write_validation(forecaster, fits)
        self.write_forecast(forecaster, panel)
        self.write_explanations()
        record = self.write_record(record, forecaster, panel)
        (self.out / outputs.INCOMPLETE).unlink(missing_ok=True)  # the record lists every output: complete
        with self.clock.phase("report"):
            report.build_report(self.out, self.s.report_lang, max_schools=self.s.report_max_schools,
                                municipal_map=self.s.municipal_map)
        record = self.write_timings(record)  # again, with the report's time
        for step, seconds in record["timings_s"].items():
            log.info("timing %-28s %8.1fs", step, seconds)
        log.info("report: %s", self.out / outputs.REPORT)
        _log_table(cv.summary)
        if self.shap_failures:
            raise PipelineError("SHAP failed for " + "; ".join(f"{k}: {v}" for k, v in self.shap_failures.items()))
        return record

    def prepare_output(self) -> None:
        """Logging into the folder (checked and locked by `run`), the folder marked incomplete
        until the run record is written (the report of an earlier run removed: it is rebuilt),
        and the checkpoints' place."""
        runlog.setup_logging(self.out)
        mark_incomplete(self.out, "run")
        (self.out / outputs.REPORT).unlink(missing_ok=True)
        if self.s.fresh and self.checkpoints.exists():
            shutil.rmtree(self.checkpoints)
            log.info("--fresh: removed earlier checkpoints")
        self.checkpoints.mkdir(exist_ok=True)

    def fetch_and_ingest(self) -> list[int]:
        with self.clock.phase("download"):
            years = ensure_raw(self.s)
        if len(years) <= self.s.min_train_years:
            raise PipelineError(f"walk-forward validation needs more than {self.s.min_train_years} census years; "
                                f"have {years} in {self.s.raw_dir}")
        with self.clock.phase("ingest"):
            _ingest(self.s, self.engine, years)
        return years

    # ----------------------------------------------------------- the stage loop's hooks
    def phase(self, name: str):
        return self.clock.phase(name)

    def resumed(self, flag: str) -> StageCV | None:
        found = checkpoints.load(self.checkpoints, flag, self._fingerprint(flag), self.shap_dir)
        if found is None:
            return None
        cv, importance = found
        self.importances.append(importance)
        return cv

    def validated(self, cv: StageCV) -> None:
        """The walk-forward's predictions kept at once (cv_predictions.parquet is made of them),
        then SHAP; the checkpoint counts once SHAP is in it too."""
        checkpoints.save_predictions(self.checkpoints, cv)
        if cv.last_fold is None:
            raise PipelineError(f"{cv.flag}: the walk-forward kept no fold to explain")  # a fresh walk-forward always does
        with self.clock.phase(f"shap {cv.flag}"):
            try:
                importance = explain.explain_stage(cv.flag, cv.last_fold, self.shap_dir, self.s.shap_sample, self.s.model.seed)
            except atomic.DiskFull:
                raise  # not SHAP's failure: the run stops, and its rerun resumes
            except Exception as exc:  # reported at the end and in the exit code, never swallowed
                log.exception("%s: SHAP explanation failed", cv.flag)
                self.shap_failures[cv.flag] = f"{type(exc).__name__}: {exc}"
                return
        checkpoints.commit(self.checkpoints, cv, importance, self._fingerprint(cv.flag))
        self.importances.append(importance)

    def refitted(self, fit: StageFit, forecast_rows: pl.DataFrame) -> None:
        assert not isinstance(fit.model, coherence.SumOfParts)  # a sum of stages comes through `derived`
        with self.clock.phase(f"forecast {fit.flag}"):
            self.schools.append(forecast.school_forecasts(forecast_rows, fit.flag, fit.model, fit.chosen, fit.calibration))

    def derived(self, fit: StageFit) -> None:
        """A sum of stages: its walk-forward kept for cv_predictions.parquet, an earlier run's
        SHAP plots of it removed (it has none now), its forecast the sum of its parts'."""
        checkpoints.save_derived(self.checkpoints, fit.cv)
        for png in checkpoints.shap_pngs(self.shap_dir, fit.flag):
            png.unlink(missing_ok=True)
        assert isinstance(fit.model, coherence.SumOfParts)
        flags = fit.model.parts
        with self.clock.phase(f"forecast {fit.flag}"):
            parts = [s for s in self.schools if s.height and s[STAGE][0] in flags]
            if parts:
                self.schools.append(forecast.sum_of_parts(pl.concat(parts, how="diagonal"), fit.flag, flags, fit.calibration))

    def _fingerprint(self, flag: str) -> str:
        """The stage's checkpoint fingerprint, computed once (`resumed`, then `validated`)."""
        if flag not in self.fingerprints:
            digest = self.demography.digest if self.demography is not None else ""
            self.fingerprints[flag] = checkpoints.fingerprint(self.s, self.years, flag, digest)
        return self.fingerprints[flag]

    # ----------------------------------------------------------- outputs
    def write_validation(self, forecaster: EnrollmentForecaster, fits: list[StageFit]) -> CVResult:
        cv = forecaster.cv_
        atomic.write_csv(self.out / outputs.RESULTS, cv.summary)
        atomic.concat_parquet(self.out / outputs.CV_PREDICTIONS,
                              [checkpoints.predictions_file(self.checkpoints, fit.flag) for fit in fits])
        atomic.write_csv(self.out / outputs.COVERAGE, cv.coverage)
        atomic.write_csv(self.out / outputs.ERROR_BY_SIZE, cv.error_by_size)
        atomic.write_csv(self.out / outputs.CV_TOTALS, cv.totals)
        return cv

    def write_forecast(self, forecaster: EnrollmentForecaster, panel: pl.DataFrame) -> None:
        with self.clock.phase("forecast"):
            schools = forecast.published(pl.concat(self.schools, how="diagonal"), panel, forecaster.calibration_)
            self.births = municipal.choices(panel, forecaster.calibration_, say=True)
            written = _write_forecast(forecaster, panel, schools, self.out, self.s.model.seed, self.births)
            atomic.write_csv(self.out / outputs.HISTORY, forecast.history(panel, list(forecaster.models_)))
            forecaster.save(self.out / outputs.MODELS)
        log.info("forecast for %s: %d files; models saved in %s", _years_text(forecast_years(forecaster, panel)),
                 len(written), self.out / outputs.MODELS)

    def write_explanations(self) -> None:
        if self.importances:
            atomic.write_csv(self.shap_dir / outputs.SHAP_IMPORTANCE, pl.concat(self.importances))

    def write_record(self, record: dict, forecaster: EnrollmentForecaster, panel: pl.DataFrame) -> dict:
        """run_metadata.json before the report: what the report reads, with each file's sha256."""
        years = forecast_years(forecaster, panel)
        if forecaster.skipped_stages_:
            log.warning("stages skipped: %s", "; ".join(f"{k}: {v}" for k, v in forecaster.skipped_stages_.items()))
        record.update({"stages": list(forecaster.models_), "skipped_stages": forecaster.skipped_stages_,
                       "unvalidated_horizons": unvalidated_horizons(forecaster),
                       "births_weight": births_weights(forecaster, self.births),
                       "forecast_year": years[0], "forecast_years": years,
                       "outputs_sha256": {name: storage.sha256(self.out / name) for name in outputs.report_inputs(years)}})
        return self.write_timings(record)

    def write_timings(self, record: dict) -> dict:
        """The record with the phases timed so far (the report's, once it is written)."""
        record.update({"timings_s": self.clock.timings(), "phases": self.clock.phases})
        atomic.write_json(self.out / outputs.METADATA, record)
        return record


def births_weights(forecaster: EnrollmentForecaster, chosen: dict[str, municipal.Choice]) -> dict[str, dict[str, float]]:
    """Each stage's births weights in its municipal totals by years ahead (`chosen`:
    `municipal.choices`), but for a stage published as the sum of its parts (`coherence`):
    its totals are theirs."""
    sums = coherence.reconcilable(list(forecaster.models_))
    return {flag: {str(h): w for h, w in choice.weights(sorted(forecaster.chosen_[flag])).items()}
            for flag, choice in chosen.items() if flag not in sums}


def unvalidated_horizons(forecaster: EnrollmentForecaster) -> dict[str, dict]:
    """Per stage, the years ahead forecast without a walk-forward of their own, and the horizon
    whose choice they keep (`runner.carry_forward`; None: none was validated)."""
    found = {}
    for flag, chosen in forecaster.chosen_.items():
        missing = unvalidated(chosen, forecaster.calibration_.get(flag))
        if missing:
            kept = [h for h in chosen if h not in missing]
            found[flag] = {"years_ahead": missing, "model_of": max(kept) if kept else None}
    return found


def _log_table(summary: pl.DataFrame) -> None:
    for row in summary.filter(pl.col(CHOSEN)).iter_rows(named=True):
        log.info("%-12s best %-12s MAE %8.2f  skill vs persistence %+6.1f%%", row[STAGE], row[MODEL],
                 row[MAE_MEAN], 100 * row[SKILL_VS_PERSISTENCE])
