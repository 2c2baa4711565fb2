"""INEP yearly zips -> one typed Parquet file per year, reading only the columns we need.

A zip is read in whichever layout INEP used (`layouts`: one school table, or the 2025
tables joined by school), straight out of the archive (CRC-checked, never extracted) by
`csvread`; the cache files of every year and layout have the same columns and types.
Years whose zip is unchanged (size, mtime, sha256 in the manifest) are skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from censo_forecast import atomic, storage
from censo_forecast.inep import archive, catalog, layouts
from censo_forecast.inep.csvread import IngestError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class IngestReport:
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        if self.failed:
            lines = "\n".join(f"  {year}: {msg}" for year, msg in sorted(self.failed.items()))
            raise IngestError(f"{len(self.failed)} year(s) could not be ingested:\n{lines}")


def cache_path_name(year: int) -> str:
    return f"censo_{year}.parquet"


def cache_path(cache_dir, year: int):
    """The year's cache file: a Path for a local folder, a URL for a remote one."""
    return storage.join(cache_dir, cache_path_name(year))


def raw_zips(raw_dir) -> dict[int, storage.Location]:
    """Census zips present in a folder (path or URL), by year; when a year has both, the
    re-publication (microdados_censo_escolar_YYYY_.zip) supersedes the first release."""
    found: dict[int, storage.Location] = {}
    republished: set[int] = set()
    for name, location in storage.listdir(raw_dir).items():
        parsed = catalog.parse_zip_name(name)
        if parsed is not None and (parsed[1] or parsed[0] not in republished):
            found[parsed[0]] = location
            if parsed[1]:
                republished.add(parsed[0])
    return found


def read_census_zip(zip_path, year: int) -> pl.DataFrame:
    """Read the needed columns of one year's data CSV straight out of its zip (a local copy of a remote one)."""
    with storage.local_copy(zip_path) as local:
        return _read_copy(local, year, zip_path)


def _read_copy(local: Path, year: int, zip_path) -> pl.DataFrame:
    """Read a local zip that stands for zip_path; errors name zip_path (the URL, not the copy)."""
    try:
        return layouts.read_census(local, year)
    except IngestError as exc:
        if local == zip_path:
            raise
        raise IngestError(str(exc).replace(str(local), str(zip_path))) from None


# ---------------------------------------------------------------- cache + manifest
def _zip_fingerprint(location) -> dict:
    return {"zip": str(location).rsplit("/", 1)[-1], **storage.stat(location)}


def _load_manifest(cache_dir) -> dict:
    return storage.read_json_dict(storage.join(cache_dir, MANIFEST), "ingest manifest")


def year_hashes(cache_dir, years: list[int]) -> dict[int, str]:
    """sha256 of the zip each cached year came from: what a checkpoint's fingerprint keys on."""
    manifest = _load_manifest(cache_dir)
    missing = [y for y in years if not isinstance(manifest.get(str(y)), dict) or "sha256" not in manifest[str(y)]]
    if missing:
        raise IngestError(f"years {missing} are not in the ingest manifest of {cache_dir}; run `censo-forecast ingest`")
    return {y: manifest[str(y)]["sha256"] for y in years}


def _is_current(entry, zip_path, parquet) -> bool:
    """The year's cache file is there, intact (its sha256 as written) and made from this zip."""
    if not isinstance(entry, dict) or not storage.exists(parquet) or entry.get("schema_version") != catalog.CACHE_SCHEMA_VERSION:
        return False
    if entry.get("parquet_sha256") != storage.sha256(parquet):
        log.warning("cache file %s does not match the hash recorded when it was written (damaged); it will be "
                    "ingested again", parquet)
        return False
    now = _zip_fingerprint(zip_path)
    if entry.get("size") != now["size"] or entry.get("zip") != now["zip"]:
        return False
    # hashed every time: a zip replaced by other content of the same size keeps its mtime when
    # copied with its times (cp -p, rsync -t); a national year hashes in about 0.1 s
    return entry.get("sha256") == storage.sha256(zip_path)


def ingest_year(zip_path, year: int, cache_dir) -> dict:
    """One year: zip (path or URL) -> cache Parquet (atomic); returns its manifest entry."""
    started = time.perf_counter()
    with storage.local_copy(zip_path) as local:  # a remote zip is fetched once, for reading and hashing
        frame = _read_copy(local, year, zip_path)
        sha256 = storage.sha256(local)
    target = cache_path(cache_dir, year)
    storage.write_parquet(target, frame)
    entry = {
        **_zip_fingerprint(zip_path),
        "sha256": sha256,
        "rows": frame.height,
        "parquet": cache_path_name(year),
        "parquet_sha256": storage.sha256(target),
        "schema_version": catalog.CACHE_SCHEMA_VERSION,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("ingested %d: %d rows from %s in %.1fs", year, frame.height, entry["zip"], entry["seconds"])
    return entry


def ingest(raw_dir, cache_dir, years: list[int] | None = None, jobs: int = 1, force: bool = False, progress=None,
           executor: Executor | None = None) -> IngestReport:
    """Ingest every requested year found in raw_dir; unchanged years are skipped.

    Folders may be paths or fsspec URLs. Years run on `executor` (a Dask client's, for
    one) or on `jobs` threads; the manifest is written here, after each year. The cache is
    held (`cache_lock`) throughout: another process ingesting into it waits.
    """
    cache_dir = storage.normalize(cache_dir)
    storage.makedirs(cache_dir)
    with cache_lock(cache_dir):
        return _ingest_locked(raw_dir, cache_dir, years, jobs, force, progress, executor)


def _ingest_locked(raw_dir, cache_dir, years, jobs, force, progress, executor) -> IngestReport:
    available = raw_zips(raw_dir)
    wanted = years if years is not None else sorted(available)
    report = IngestReport()
    for year in wanted:
        if year not in available:
            report.failed[year] = f"no {catalog.zip_name(year)} in {raw_dir}"
    manifest = _load_manifest(cache_dir)
    todo = []
    for year in (y for y in wanted if y in available):
        if not force and _is_current(manifest.get(str(year)), available[year], cache_path(cache_dir, year)):
            report.skipped.append(year)
        else:
            todo.append(year)
    if report.skipped:
        log.info("ingest: %d year(s) unchanged, skipped: %s", len(report.skipped), report.skipped)
    pool = executor if executor is not None else ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {pool.submit(ingest_year, available[y], y, cache_dir): y for y in todo}
        for future in as_completed(futures):
            year = futures[future]
            try:
                entry = future.result()
            except atomic.DiskFull:
                raise  # every later year would fail alike: one message, and the rerun resumes
            except (IngestError, archive.ArchiveError, OSError) as exc:
                report.failed[year] = str(exc)  # said once, by whoever reads the report
                log.debug("ingest %d failed: %s", year, exc)
            else:
                manifest[str(year)] = entry
                storage.write_text(storage.join(cache_dir, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                report.written.append(year)
            if progress is not None:
                progress(year)
    finally:
        if executor is None:
            pool.shutdown()
    report.written.sort()
    return report


def parquet_hashes(cache_dir, years: list[int]) -> dict[int, str]:
    """sha256 of each year's cache file as it was written (from the manifest)."""
    manifest = _load_manifest(cache_dir)
    hashes = {y: manifest[str(y)].get("parquet_sha256") for y in years if isinstance(manifest.get(str(y)), dict)}
    missing = [y for y in years if not hashes.get(y)]
    if missing:
        raise IngestError(f"years {missing}: no cache file recorded in {storage.join(cache_dir, MANIFEST)}; "
                          "run `censo-forecast ingest` first")
    return hashes


def read_cached_year(cache_dir, year: int, expected_sha256: str, columns: list[str] | None = None) -> pl.DataFrame:
    """One year's cache file, after checking it is the file ingest wrote: a damaged file is
    never read (a flipped byte can garble values silently, or crash the Parquet reader). The
    bytes are read once: the ones hashed are the ones parsed."""
    location = cache_path(cache_dir, year)
    if not storage.exists(location):
        raise IngestError(f"year {year}: no cache file {location}; run `censo-forecast ingest` first")
    data = storage.read_bytes(location)
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IngestError(f"year {year}: cache file {location} is damaged (its sha256 is not the one recorded when it "
                          "was written); run `censo-forecast ingest` again to re-create it")
    return pl.read_parquet(io.BytesIO(data), columns=columns)


def load_cache(cache_dir, years: list[int], raw_dir=None) -> pl.DataFrame:
    """All cached years as one frame (the panel's input), each verified first; with `raw_dir`,
    each year also tied to the zip it must come from (`check_tied`)."""
    with cache_lock(cache_dir):
        if raw_dir is not None:
            check_tied(cache_dir, raw_dir, years)
        hashes = parquet_hashes(cache_dir, years)
        return pl.concat([read_cached_year(cache_dir, y, hashes[y]) for y in years], how="vertical")


CACHE_LOCK_WAIT_S = 600.0  # another process ingesting into the same cache: wait this long for it


@contextmanager
def cache_lock(cache_dir) -> Iterator[None]:
    """The cache for this process alone while it writes or reads it (a local folder; a remote
    store is left to its own consistency): a shared cache never serves a half-replaced census."""
    local = storage.local_path(cache_dir)
    if local is None:
        yield
        return
    local.mkdir(parents=True, exist_ok=True)
    try:
        with atomic.folder_lock(local, "censo-forecast process using this cache", wait_s=CACHE_LOCK_WAIT_S):
            yield
    except atomic.FolderBusy as exc:
        raise IngestError(str(exc)) from None


def check_tied(cache_dir, raw_dir, years: list[int]) -> None:
    """Each cached year was made from the zip of that year in `raw_dir` (its sha256 in the
    manifest): a cache shared with another census is named, never used."""
    zips = raw_zips(raw_dir)
    recorded = year_hashes(cache_dir, years)
    other = [y for y in years if y in zips and storage.sha256(zips[y]) != recorded[y]]
    if other:
        raise IngestError(f"the cache {cache_dir} holds year(s) {other} made from other zips than those in {raw_dir} "
                          "(another census shares this cache, or the zips changed since): rerun to ingest them again, "
                          "or give this census a --cache-dir of its own")


def cached_years(cache_dir) -> list[int]:
    manifest = _load_manifest(cache_dir)
    return sorted(int(y) for y in manifest if y.isdigit() and storage.exists(cache_path(cache_dir, int(y))))


__all__ = [
    "IngestError",
    "IngestReport",
    "ingest",
    "ingest_year",
    "read_census_zip",
    "load_cache",
    "raw_zips",
    "cache_path",
    "cache_path_name",
    "cached_years",
]
