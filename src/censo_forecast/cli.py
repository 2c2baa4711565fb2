"""`censo-forecast` command line: a thin face over the library; each subcommand is one step."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from censo_forecast import config as config_mod
from censo_forecast import outputs
from censo_forecast.inep import catalog

app = typer.Typer(
    help="Forecast next year's school enrollment per school and stage from INEP's School Census.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("censo_forecast.cli")

ConfigOpt = typer.Option(None, "--config", help="TOML file with settings (command-line options win).")
YearsOpt = typer.Option(None, "--years", help="Years: '2011-2021', '2015,2017' or 'all'.")
JobsOpt = typer.Option(None, "--jobs", help="Parallel years (default 2).")
LangOpt = typer.Option(None, "--lang", help="Language of report.html: pt-BR (default) or en.")
MunicipalMapOpt = typer.Option(False, "--municipal-map", help="Add a municipal map to the report (needs geobr installed and a network).")
RawDirOpt = typer.Option(None, "--raw-dir", help="Folder (or fsspec URL) with microdados_censo_escolar_YYYY.zip (default data/raw).")
CacheDirOpt = typer.Option(None, "--cache-dir", help="Parquet cache, folder or fsspec URL (default: beside the raw folder).")
OfflineOpt = typer.Option(False, "--offline", help="Use only the zips already in --raw-dir.")
EngineOpt = typer.Option(None, "--engine", help="local (default) | dask: ingest, features and training on a Dask cluster.")
SchedulerOpt = typer.Option(None, "--scheduler", help="Dask scheduler address (tcp://host:8786); default: start a LocalCluster.")
WorkersOpt = typer.Option(None, "--workers", help="LocalCluster workers when no --scheduler is given (default 2).")
ListingUrlOpt = typer.Option(None, "--listing-url", help="Page listing the zips; 'none' to skip discovery.")
TimeoutOpt = typer.Option(None, "--timeout", help="Seconds to wait for a server per request (default 60); a file gives up after 3 such waits without a byte.")


DEBUG_ENV = "CENSO_FORECAST_DEBUG"  # set to 1 to see the traceback behind an error message


def _fail(message: str, code: int = 1) -> None:
    """Say what went wrong once on the console, and keep it in the run's log file when one is open."""
    if os.environ.get(DEBUG_ENV) and sys.exc_info()[0] is not None:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_censo_forecast", False) and isinstance(handler, logging.FileHandler):
            handler.handle(record)
    raise typer.Exit(code)


def _settings(config: Optional[Path], **overrides) -> config_mod.Settings:
    try:
        return config_mod.load_settings(config, **overrides)
    except (ValueError, TypeError) as exc:
        _fail(str(exc), 2)
        raise  # unreachable; keeps type checkers content


def _years(spec: Optional[str]) -> Optional[list[int]]:
    if spec is None:
        return None
    try:
        return catalog.parse_years(spec)
    except ValueError as exc:
        _fail(str(exc), 2)
        raise


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder for the synthetic INEP-layout zips."),
    years: str = typer.Option(f"{catalog.DEFAULT_FIRST_YEAR}-{catalog.LATEST_KNOWN_YEAR}", "--years",
                              help="Consecutive years to generate."),
    schools: int = typer.Option(2000, "--schools", help="Active schools in the first year (about 180000 nationally)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical zips."),
    placebo: bool = typer.Option(False, "--placebo", help="Independent year-over-year changes: no learnable signal."),
    first_release: bool = typer.Option(False, "--first-release",
                                       help="Multi-table years as INEP's first 2025 release, not the re-publication (_V2)."),
    tables_from: int = typer.Option(catalog.SINGLE_TABLE_LAST_YEAR + 1, "--tables-from",
                                    help="First year written in the multi-table layout (INEP's: 2025)."),
    jobs: int = typer.Option(2, "--jobs", help="Threads compressing zips."),
) -> None:
    """Write a synthetic School Census in INEP's exact file layouts."""
    from censo_forecast.inep import synthetic
    from censo_forecast.runlog import setup_logging

    setup_logging()
    try:
        settings = synthetic.SynthSettings(years=catalog.parse_years(years), schools=schools, seed=seed, placebo=placebo,
                                           tables_from=tables_from, first_release=first_release)
        synthetic.generate(out, settings, jobs=jobs)
    except ValueError as exc:
        _fail(str(exc), 2)
    typer.echo(f"wrote {len(settings.years)} synthetic census year(s) to {out}")


@app.command()
def ingest(
    raw_dir: Optional[str] = RawDirOpt,
    cache_dir: Optional[str] = CacheDirOpt,
    years: Optional[str] = YearsOpt,
    jobs: Optional[int] = JobsOpt,
    force: bool = typer.Option(False, "--force", help="Re-ingest years whose zip is unchanged."),
    engine: Optional[str] = EngineOpt,
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Read each year's CSV out of its zip into a typed Parquet cache (only the needed columns)."""
    from censo_forecast.engine import EngineError, open_engine
    from censo_forecast.inep import ingest as ingest_mod
    from censo_forecast.runlog import Progress, setup_logging

    setup_logging()
    s = _settings(config, raw_dir=raw_dir, cache_dir=cache_dir, years=_years(years), jobs=jobs, engine=engine,
                  scheduler=scheduler, workers=workers)
    wanted = s.years if s.years is not None else sorted(ingest_mod.raw_zips(s.raw_dir))
    if not wanted:
        _fail(f"no census zips (microdados_censo_escolar_YYYY.zip) in {s.raw_dir}")
    try:
        with open_engine(s) as eng, Progress("ingest", len(wanted), unit="year") as bar:
            report = eng.ingest(s.raw_dir, s.cache, wanted, jobs=s.jobs, force=force, progress=lambda _y: bar.update())
    except EngineError as exc:
        _fail(str(exc))
    typer.echo(f"ingested {report.written or 'none'}; unchanged {report.skipped or 'none'}; cache {s.cache}")
    if report.failed:
        _fail(f"{len(report.failed)} year(s) failed:" + "".join(f"\n  {y}: {m}" for y, m in sorted(report.failed.items())))


@app.command()
def download(
    years: Optional[str] = typer.Option(None, "--years", help="Years to fetch: '2011-2024', '2019,2021' or 'all' (default: every year offered)."),
    raw_dir: Optional[str] = typer.Option(None, "--raw-dir", help="Local folder for the zips (default data/raw)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Where the zips live (a mirror; http:// is fine on this machine)."),
    listing_url: Optional[str] = ListingUrlOpt,
    jobs: Optional[int] = JobsOpt,
    timeout: Optional[float] = TimeoutOpt,
    ca_bundle: Optional[Path] = typer.Option(None, "--ca-bundle", help="Extra CA certificates (PEM) to trust."),
    insecure: bool = typer.Option(False, "--insecure", help="Turn TLS verification OFF (never the default; warns every time)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Fetch census zips from INEP (or a mirror): resumable, retried, verified, TLS on."""
    from censo_forecast.runlog import setup_logging

    setup_logging()
    s = _settings(config, raw_dir=raw_dir, base_url=base_url, listing_url=listing_url, jobs=jobs, ca_bundle=ca_bundle,
                  insecure=insecure or None, timeout_s=timeout)
    report = _download(s, _years(years) if years and years.lower() != "all" else None)
    typer.echo(f"downloaded {report.downloaded or 'none'}; unchanged {report.unchanged or 'none'}; folder {s.raw_dir}")
    if not report.ok:
        _fail("download incomplete:\n  " + "\n  ".join(report.problems()))


def _download(s: config_mod.Settings, years: Optional[list[int]]):
    from censo_forecast import storage
    from censo_forecast.inep import download as dl
    from censo_forecast.pipeline import download_options

    if storage.local_path(s.raw_dir) is None:
        _fail(f"--raw-dir {s.raw_dir}: downloads go to a local folder; copy the zips to the store afterwards")
    try:
        return dl.download(s.raw_dir, years, download_options(s))
    except dl.DownloadError as exc:
        _fail(str(exc))
        raise


@app.command()
def run(
    raw_dir: Optional[str] = RawDirOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default outputs)."),
    cache_dir: Optional[str] = CacheDirOpt,
    years: Optional[str] = YearsOpt,
    stages: Optional[str] = typer.Option(None, "--stages", help="Offer flags, comma-separated (IN_MED,IN_FUND_AI); default all ten."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    offline: bool = OfflineOpt,
    fresh: bool = typer.Option(False, "--fresh", help="Ignore checkpoints of an earlier run and start over."),
    horizons: Optional[int] = typer.Option(None, "--horizons", help="Forecast years after the last census year, each validated (default 5, at most 10)."),
    jobs: Optional[int] = JobsOpt,
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Download missing years from this mirror (see `download`)."),
    listing_url: Optional[str] = ListingUrlOpt,
    timeout: Optional[float] = TimeoutOpt,
    engine: Optional[str] = EngineOpt,
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    lang: Optional[str] = LangOpt,
    municipal_map: bool = MunicipalMapOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """The main job: (download) -> ingest -> features -> validation -> SHAP -> forecast -> report."""
    from censo_forecast import pipeline
    from censo_forecast.engine import EngineError
    from censo_forecast.inep import download as dl
    from censo_forecast.inep import ingest as ingest_mod

    try:
        stage_list = catalog.parse_stages(stages) if stages is not None else None
    except ValueError as exc:
        _fail(str(exc), 2)
    s = _settings(config, raw_dir=raw_dir, out_dir=out, cache_dir=cache_dir, years=_years(years), stages=stage_list,
                  device=device, offline=offline or None, fresh=fresh or None, horizons=horizons, jobs=jobs, base_url=base_url,
                  listing_url=listing_url, timeout_s=timeout, engine=engine, scheduler=scheduler, workers=workers,
                  report_lang=lang, municipal_map=municipal_map or None)
    try:
        record = pipeline.run(s)
    except (pipeline.PipelineError, ingest_mod.IngestError, dl.DownloadError, EngineError, RuntimeError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last finished stage", 130)
    typer.echo(f"done in {record['timings_s']['total']:.0f}s: {s.out_dir / outputs.RESULTS}")


@app.command()
def report(
    out: Path = typer.Option(..., "--out", help="Output folder of a finished run."),
    lang: Optional[str] = typer.Option(None, "--lang", help="pt-BR or en (default: the run's report_lang)."),
    max_schools: Optional[int] = typer.Option(None, "--max-schools", help="Most schools the school table holds (default: the run's report_max_schools)."),
    municipal_map: bool = MunicipalMapOpt,
) -> None:
    """(Re)write OUT/report.html, a self-contained page, from a run's outputs."""
    from censo_forecast import report as report_mod

    if lang is not None and lang not in config_mod.REPORT_LANGUAGES:
        _fail(f"--lang must be one of {', '.join(config_mod.REPORT_LANGUAGES)}, not {lang!r}", 2)
    try:
        path = report_mod.build_report(out, lang, max_schools=max_schools, municipal_map=municipal_map or None)
    except (FileNotFoundError, report_mod.DamagedOutput) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {out / 'report.html'} ({exc.strerror or exc}); choose a folder you can write to")
    typer.echo(f"wrote {path}")


@app.command()
def predict(
    models: Path = typer.Option(..., "--models", help="Saved models folder (OUT/models of a run)."),
    raw_dir: Optional[str] = RawDirOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for the forecast files."),
    cache_dir: Optional[str] = CacheDirOpt,
    years: Optional[str] = YearsOpt,
    offline: bool = OfflineOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Forecast the years after the last census year (as many as the models were fitted for) with saved models, without retraining."""
    from censo_forecast import modelstore, pipeline
    from censo_forecast.engine import EngineError
    from censo_forecast.inep import download as dl
    from censo_forecast.inep import ingest as ingest_mod

    s = _settings(config, raw_dir=raw_dir, out_dir=out, cache_dir=cache_dir, years=_years(years), offline=offline or None)
    try:
        written = pipeline.predict(s, models)
    except (modelstore.ModelStoreError, pipeline.PipelineError, ingest_mod.IngestError, dl.DownloadError, EngineError) as exc:
        _fail(str(exc))
    typer.echo("wrote " + ", ".join(str(p) for p in written))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
