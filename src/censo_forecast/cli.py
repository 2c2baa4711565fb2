"""`censo-forecast` command line: a thin face over the library; each subcommand is one step."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from censo_forecast import __version__, outputs
from censo_forecast import config as config_mod
from censo_forecast.atomic import DiskFull
from censo_forecast.inep import catalog, synthetic

app = typer.Typer(
    help="Forecast next year's school enrollment per school and stage from INEP's School Census.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("censo_forecast.cli")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"censo-forecast {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Forecast school enrollment per school and stage from INEP's School Census."""

def setting(name: str, *flags: str) -> Any:
    """An option for a setting: its help and default from `config` (unset here, so that a TOML
    file's value applies, then the setting's default)."""
    return typer.Option(None, *flags, help=config_mod.describe(name))


def switch(name: str, flag: str) -> Any:
    """An on/off option for a boolean setting (off unless given here or in the TOML file)."""
    return typer.Option(False, flag, help=config_mod.describe(name))


def synth_setting(name: str, flag: str, help: str) -> Any:
    """An option of `synth` with the default of its settings (`synthetic.SynthSettings`)."""
    default = next(f.default for f in dataclasses.fields(synthetic.SynthSettings) if f.name == name)
    return typer.Option(default, flag, help=help)


ConfigOpt = typer.Option(None, "--config", help="TOML file with settings (command-line options win).")
YearsOpt = setting("years", "--years")
JobsOpt = setting("jobs", "--jobs")
LangOpt = setting("report_lang", "--lang")
MunicipalMapOpt = switch("municipal_map", "--municipal-map")
RawDirOpt = setting("raw_dir", "--raw-dir")
CacheDirOpt = setting("cache_dir", "--cache-dir")
OfflineOpt = switch("offline", "--offline")
EngineOpt = setting("engine", "--engine")
SchedulerOpt = setting("scheduler", "--scheduler")
WorkersOpt = setting("workers", "--workers")
ListingUrlOpt = setting("listing_url", "--listing-url")
TimeoutOpt = setting("timeout_s", "--timeout")
OutOpt = setting("out_dir", "--out")
CaBundleOpt = setting("ca_bundle", "--ca-bundle")
BaseUrlOpt = setting("base_url", "--base-url")
DemographyOpt = setting("demography", "--demography")


DEBUG_ENV = "CENSO_FORECAST_DEBUG"  # set to 1 to see the traceback behind an error message


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`, systemd, a container stopping), met as Ctrl-C is."""


@contextmanager
def _terminable() -> Iterator[None]:
    """SIGTERM raised as `Terminated` in the block, so a command stops as after Ctrl-C: files
    written atomically, the output folder's lock released, one line, exit 143."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(exc: KeyboardInterrupt, resume: str) -> None:
    """One line for Ctrl-C (exit 130) or SIGTERM (exit 143), saying how the same command resumes."""
    terminated = isinstance(exc, Terminated)
    _fail(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; {resume}", 143 if terminated else 130)


def debugging() -> bool:
    """CENSO_FORECAST_DEBUG set to anything but empty, 0, false, no or off."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _fail(message: str, code: int = 1) -> None:
    """Say what went wrong once on the console, and keep it in the run's log file when one is open."""
    if debugging() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_censo_forecast", False) and isinstance(handler, logging.FileHandler):
            handler.handle(record)
    raise typer.Exit(code)


def _settings(config: Path | None, **overrides) -> config_mod.Settings:
    try:
        return config_mod.load_settings(config, **overrides)
    except (ValueError, TypeError) as exc:
        _fail(str(exc), 2)
        raise  # unreachable; keeps type checkers content


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder for the synthetic INEP-layout zips."),
    years: str = typer.Option(f"{catalog.DEFAULT_FIRST_YEAR}-{catalog.LATEST_KNOWN_YEAR}", "--years",
                              help="Consecutive years to generate."),
    schools: int = synth_setting("schools", "--schools", "Active schools in the first year (about 180000 nationally)."),
    seed: int = synth_setting("seed", "--seed", "Random seed; the same seed gives byte-identical zips."),
    placebo: bool = typer.Option(False, "--placebo", help="Independent year-over-year changes: no learnable signal."),
    first_release: bool = typer.Option(False, "--first-release",
                                       help="Multi-table years as INEP's first 2025 release, not the re-publication (_V2)."),
    tables_from: int = synth_setting("tables_from", "--tables-from", "First year written in the multi-table layout (INEP's: 2025)."),
    jobs: int = typer.Option(config_mod.default("jobs"), "--jobs", help="Threads compressing zips (-1: every CPU)."),
) -> None:
    """Write a synthetic School Census in INEP's exact file layouts."""
    from censo_forecast import machine
    from censo_forecast.runlog import setup_logging

    setup_logging()
    try:
        settings = synthetic.SynthSettings(years=catalog.parse_years(years), schools=schools, seed=seed, placebo=placebo,
                                           tables_from=tables_from, first_release=first_release)
        synthetic.generate(out, settings, jobs=machine.effective_jobs(jobs))
    except ValueError as exc:
        _fail(str(exc), 2)
    except DiskFull as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(settings.years)} synthetic census year(s) to {out}")


@app.command()
def ingest(
    raw_dir: str | None = RawDirOpt,
    cache_dir: str | None = CacheDirOpt,
    years: str | None = YearsOpt,
    jobs: int | None = JobsOpt,
    force: bool = typer.Option(False, "--force", help="Re-ingest years whose zip is unchanged."),
    engine: str | None = EngineOpt,
    scheduler: str | None = SchedulerOpt,
    workers: int | None = WorkersOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Read each year's CSV out of its zip into a typed Parquet cache (only the needed columns)."""
    from censo_forecast.engine import EngineError, open_engine
    from censo_forecast.inep import ingest as ingest_mod
    from censo_forecast.runlog import Progress, setup_logging

    setup_logging()
    s = _settings(config, raw_dir=raw_dir, cache_dir=cache_dir, years=years, jobs=jobs, engine=engine,
                  scheduler=scheduler, workers=workers)
    wanted = s.years if s.years is not None else sorted(ingest_mod.raw_zips(s.raw_dir))
    if not wanted:
        _fail(f"no census zips (microdados_censo_escolar_YYYY.zip) in {s.raw_dir}")
    try:
        with open_engine(s) as eng, Progress("ingest", len(wanted), unit="year") as bar:
            report = eng.ingest(s.raw_dir, s.cache, wanted, jobs=s.threads, force=force, progress=lambda _y: bar.update())
    except (EngineError, DiskFull) as exc:
        _fail(str(exc))
    typer.echo(f"ingested {report.written or 'none'}; unchanged {report.skipped or 'none'}; cache {s.cache}")
    if report.failed:
        _fail(f"{len(report.failed)} year(s) failed:" + "".join(f"\n  {y}: {m}" for y, m in sorted(report.failed.items())))


@app.command()
def download(
    years: str | None = typer.Option(
        None, "--years", help="Years to fetch: '2011-2024', '2019,2021' or 'all' (default: every year offered)."
    ),
    raw_dir: str | None = RawDirOpt,
    base_url: str | None = BaseUrlOpt,
    listing_url: str | None = ListingUrlOpt,
    jobs: int | None = JobsOpt,
    timeout: float | None = TimeoutOpt,
    ca_bundle: Path | None = CaBundleOpt,
    insecure: bool = switch("insecure", "--insecure"),
    config: Path | None = ConfigOpt,
) -> None:
    """Fetch census zips from INEP (or a mirror): resumable, retried, verified, TLS on."""
    from censo_forecast.runlog import setup_logging

    setup_logging()
    every_year = years is None or years.strip().lower() == "all"  # every year the server offers
    s = _settings(config, raw_dir=raw_dir, base_url=base_url, listing_url=listing_url, jobs=jobs, ca_bundle=ca_bundle,
                  insecure=insecure or None, timeout_s=timeout, years=None if every_year else years)
    try:
        with _terminable():
            report = _download(s, s.years)
    except KeyboardInterrupt as exc:
        _stopped(exc, "finished years are kept and a partial one resumes: rerun the same command")
        raise
    typer.echo(f"downloaded {report.downloaded or 'none'}; unchanged {report.unchanged or 'none'}; folder {s.raw_dir}")
    if not report.ok:
        _fail("download incomplete:\n  " + "\n  ".join(report.problems()))


demography_app = typer.Typer(help="Births and population per municipality: the demographic inputs (optional).",
                              no_args_is_help=True)
app.add_typer(demography_app, name="demography")


@demography_app.command("download")
def demography_download(
    out: Path | None = typer.Option(None, "--out", help="Folder for the tables (default: --demography, else "
                                    "'demografia' beside the census cache)."),
    years: str | None = typer.Option(None, "--years", help="Birth years: '1996-2024' or 'all' (default: every year offered)."),
    states: str | None = typer.Option(None, "--states", help="State abbreviations, comma-separated (default: all 27)."),
    url: str | None = setting("demography_url", "--url"),
    plain_ftp: bool = switch("plain_ftp", "--plain-ftp"),
    ca_bundle: Path | None = CaBundleOpt,
    timeout: float | None = TimeoutOpt,
    raw_dir: str | None = RawDirOpt,
    cache_dir: str | None = CacheDirOpt,
    demography: Path | None = DemographyOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Fetch SINASC births and DATASUS population by age: resumable, retried, verified, TLS where offered."""
    from censo_forecast.demography import download as dd
    from censo_forecast.demography.ftp import FtpError, FtpOptions
    from censo_forecast.runlog import setup_logging

    setup_logging()
    every_year = years is None or years.strip().lower() == "all"
    s = _settings(config, demography_url=url, plain_ftp=plain_ftp or None, ca_bundle=ca_bundle, timeout_s=timeout,
                  raw_dir=raw_dir, cache_dir=cache_dir, demography=demography)
    try:
        folder = Path(out).expanduser() if out is not None else s.demography_folder
        wanted = None if every_year else catalog.parse_years(years)
        opts = FtpOptions(url=s.demography_url, plain=s.plain_ftp, ca_bundle=s.ca_bundle, retries=s.retries, timeout_s=s.timeout_s)
        with _terminable():
            report = dd.download(folder, opts, wanted, [x.strip() for x in states.split(",")] if states else None)
    except (ValueError, FtpError, DiskFull) as exc:
        _fail(str(exc))
        raise
    except KeyboardInterrupt as exc:
        _stopped(exc, "finished files are kept and a partial one resumes: rerun the same command")
        raise
    typer.echo(f"downloaded {len(report.downloaded)} file(s); unchanged {len(report.unchanged)}; tables in {folder} "
               f"(run with --demography {folder})")
    if not report.ok:
        _fail(f"{len(report.failed)} file(s) failed:" + "".join(f"\n  {k}: {v}" for k, v in sorted(report.failed.items())))


def _download(s: config_mod.Settings, years: list[int] | None):
    from censo_forecast import storage
    from censo_forecast.inep import download as dl
    from censo_forecast.pipeline import download_options

    if storage.local_path(s.raw_dir) is None:
        _fail(f"--raw-dir {s.raw_dir}: downloads go to a local folder; copy the zips to the store afterwards")
    try:
        return dl.download(s.raw_dir, years, download_options(s))
    except (dl.DownloadError, DiskFull) as exc:
        _fail(str(exc))
        raise


@app.command()
def run(
    raw_dir: str | None = RawDirOpt,
    out: Path | None = OutOpt,
    cache_dir: str | None = CacheDirOpt,
    years: str | None = YearsOpt,
    stages: str | None = setting("stages", "--stages"),
    device: str | None = setting("device", "--device"),
    offline: bool = OfflineOpt,
    fresh: bool = switch("fresh", "--fresh"),
    horizons: int | None = setting("horizons", "--horizons"),
    jobs: int | None = JobsOpt,
    base_url: str | None = BaseUrlOpt,
    listing_url: str | None = ListingUrlOpt,
    timeout: float | None = TimeoutOpt,
    engine: str | None = EngineOpt,
    scheduler: str | None = SchedulerOpt,
    workers: int | None = WorkersOpt,
    lang: str | None = LangOpt,
    municipal_map: bool = MunicipalMapOpt,
    demography: Path | None = DemographyOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """The main job: (download) -> ingest -> features -> validation -> SHAP -> forecast -> report."""
    from censo_forecast import pipeline
    from censo_forecast.engine import EngineError
    from censo_forecast.inep import download as dl
    from censo_forecast.inep import ingest as ingest_mod

    s = _settings(config, raw_dir=raw_dir, out_dir=out, cache_dir=cache_dir, years=years, stages=stages,
                  device=device, offline=offline or None, fresh=fresh or None, horizons=horizons, jobs=jobs, base_url=base_url,
                  listing_url=listing_url, timeout_s=timeout, engine=engine, scheduler=scheduler, workers=workers,
                  report_lang=lang, municipal_map=municipal_map or None, demography=demography)
    try:
        with _terminable():
            record = pipeline.run(s)
    except (pipeline.PipelineError, ingest_mod.IngestError, dl.DownloadError, EngineError, RuntimeError, DiskFull) as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        from censo_forecast import checkpoints

        done = checkpoints.finished(s.out_dir / outputs.CHECKPOINTS)
        _stopped(exc, f"stages finished and kept: {', '.join(done) or 'none'}; rerun the same command to resume from there")
    typer.echo(f"done in {record['timings_s']['total']:.0f}s: {s.out_dir / outputs.RESULTS}")


@app.command()
def report(
    out: Path = typer.Option(..., "--out", help="Output folder of a finished run."),
    lang: str | None = typer.Option(None, "--lang", help="pt-BR or en (default: the run's report_lang)."),
    max_schools: int | None = typer.Option(
        None, "--max-schools", help="Most schools the school table holds (default: the run's report_max_schools; 0: none)."
    ),
    municipal_map: bool = MunicipalMapOpt,
) -> None:
    """(Re)write OUT/report.html, a self-contained page, from a run's outputs."""
    from censo_forecast import report as report_mod

    if lang is not None and lang not in config_mod.REPORT_LANGUAGES:
        _fail(f"--lang must be one of {', '.join(config_mod.REPORT_LANGUAGES)}, not {lang!r}", 2)
    if max_schools is not None and max_schools < 0:
        _fail(f"--max-schools must be 0 (no school table) or a positive number of schools, not {max_schools}", 2)
    try:
        path = report_mod.build_report(out, lang, max_schools=max_schools, municipal_map=municipal_map or None)
    except (FileNotFoundError, report_mod.DamagedOutput, DiskFull) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {out / outputs.REPORT} ({exc.strerror or exc}); choose a folder you can write to")
    typer.echo(f"wrote {path}")


@app.command()
def predict(
    models: Path = typer.Option(..., "--models", help="Saved models folder (OUT/models of a run)."),
    raw_dir: str | None = RawDirOpt,
    out: Path | None = OutOpt,
    cache_dir: str | None = CacheDirOpt,
    years: str | None = YearsOpt,
    offline: bool = OfflineOpt,
    demography: Path | None = DemographyOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Forecast the years after the last census year (as many as the models were fitted for) with saved models, without retraining."""
    from censo_forecast import modelstore, pipeline
    from censo_forecast.engine import EngineError
    from censo_forecast.inep import download as dl
    from censo_forecast.inep import ingest as ingest_mod

    s = _settings(config, raw_dir=raw_dir, out_dir=out, cache_dir=cache_dir, years=years, offline=offline or None,
                  demography=demography)
    try:
        with _terminable():
            written = pipeline.predict(s, models)
    except (modelstore.ModelStoreError, pipeline.PipelineError, ingest_mod.IngestError, dl.DownloadError, EngineError,
            DiskFull) as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        _stopped(exc, "no forecast file is half-written; rerun the same command")
    typer.echo("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":  # pragma: no cover - python -m censo_forecast.cli
    app()
