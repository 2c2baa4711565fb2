"""INEP yearly zips -> one typed Parquet file per year, reading only the columns we need.

The CSV is streamed out of the zip in blocks (never extracted to disk), transcoded from
latin-1 only when a block holds non-ASCII bytes, and parsed by polars with projection.
Values are read as text and cast strictly, so a bad value in a column we need is reported
with its year, member, column, line and text, while damage in columns we skip (spreadsheet
mangling, '.' placeholders) costs nothing.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from censo_forecast import atomic
from censo_forecast.inep import archive, catalog

log = logging.getLogger(__name__)

BLOCK_BYTES = 24 * 1024 * 1024
MANIFEST = "manifest.json"
_RAW_ZIP_RE = re.compile(r"^microdados_censo_escolar_(\d{4})\.zip$", re.IGNORECASE)


class IngestError(Exception):
    """A year that cannot be ingested; the message names zip, member, year and column or line."""


@dataclass
class IngestReport:
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        if self.failed:
            lines = "\n".join(f"  {year}: {msg}" for year, msg in sorted(self.failed.items()))
            raise IngestError(f"{len(self.failed)} year(s) could not be ingested:\n{lines}")


def cache_path(cache_dir: Path, year: int) -> Path:
    return Path(cache_dir) / f"censo_{year}.parquet"


def raw_zips(raw_dir: Path) -> dict[int, Path]:
    """Census zips present in a folder, by year (re-publications with a trailing '_' are skipped)."""
    found: dict[int, Path] = {}
    if not Path(raw_dir).is_dir():
        return found
    for path in sorted(Path(raw_dir).iterdir()):
        m = _RAW_ZIP_RE.match(path.name)
        if m and path.is_file():
            found[int(m.group(1))] = path
    return found


def read_census_zip(zip_path: Path, year: int) -> pl.DataFrame:
    """Read the needed columns of one year's data CSV straight out of its zip."""
    zip_path = Path(zip_path)
    try:
        zf = archive.open_zip(zip_path)
        member = archive.data_member(zf, year, zip_path)
    except archive.ArchiveError as exc:
        raise IngestError(f"year {year}: {exc}") from None
    with zf:
        where = f"{zip_path}, member {member.filename}, year {year}"
        try:
            with zf.open(member) as stream:
                return _read_stream(stream, year, where)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise IngestError(f"{where}: the member is damaged or truncated ({exc})") from None


def _read_stream(stream, year: int, where: str) -> pl.DataFrame:
    header_bytes = stream.readline()
    if not header_bytes.strip():
        raise IngestError(f"{where}: the file is empty (no header line)")
    header = header_bytes.decode(catalog.CSV_ENCODING).strip().split(catalog.CSV_SEPARATOR)
    missing = [c for c in catalog.REQUIRED_COLUMNS if c not in header]
    if missing:
        raise IngestError(f"{where}: required column(s) missing from the header: {', '.join(missing)}")
    positions = sorted(header.index(c) for c in catalog.CACHE_SCHEMA if c in header)
    names = [header[i] for i in positions]
    frames: list[pl.DataFrame] = []
    line = 2  # file line of the first data row (header is line 1)
    leftover = b""
    while True:
        block = stream.read(BLOCK_BYTES)
        data = leftover + block
        if not block:
            leftover = b""
        else:
            cut = data.rfind(b"\n") + 1
            data, leftover = data[:cut], data[cut:]
        if data.strip():
            frames.append(_parse_block(data, positions, names, len(header), year, line, where))
            line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        if not block:
            break
    if not frames:
        raise IngestError(f"{where}: the file has a header but no rows")
    frame = pl.concat(frames, how="vertical")
    frame = frame.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in catalog.OPTIONAL_COLUMNS.items() if name not in names
    )
    wrong_year = frame.filter(pl.col("NU_ANO_CENSO") != year)
    if wrong_year.height:
        raise IngestError(
            f"{where}: NU_ANO_CENSO is {wrong_year['NU_ANO_CENSO'][0]} on {wrong_year.height} row(s), expected {year}"
        )
    return frame.select(list(catalog.CACHE_SCHEMA))


def _check_field_counts(data: bytes, width: int, first_line: int, where: str) -> None:
    """Every row must have the header's number of fields (polars would silently drop extras)."""
    rows = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if data.count(catalog.CSV_SEPARATOR.encode()) == rows * (width - 1):
        return
    for offset, row in enumerate(data.split(b"\n")):
        fields = row.count(b";") + 1
        if row.strip() and fields != width:
            raise IngestError(f"{where}: line {first_line + offset} has {fields} fields, the header has {width}")


def _parse_block(data: bytes, positions, names, width: int, year: int, first_line: int, where: str) -> pl.DataFrame:
    _check_field_counts(data, width, first_line, where)
    if not data.isascii():
        data = data.decode(catalog.CSV_ENCODING).encode("utf-8")
    if b"\r" in data:  # spreadsheet re-saves use CRLF
        data = data.replace(b"\r\n", b"\n")
    try:
        raw = pl.read_csv(
            data,
            has_header=False,
            separator=catalog.CSV_SEPARATOR,
            columns=positions,
            infer_schema=False,
            quote_char=None,
            null_values=["."],
            truncate_ragged_lines=False,
            row_index_name="_line",
            row_index_offset=first_line,
        )
    except pl.exceptions.PolarsError as exc:
        raise IngestError(f"{where}: rows from line {first_line} do not parse as {width} ';'-separated fields ({exc})") from None
    raw.columns = ["_line", *names]
    return _cast(raw, names, year, where)


def _cast(raw: pl.DataFrame, names: list[str], year: int, where: str) -> pl.DataFrame:
    exprs = []
    for name in names:
        dtype = catalog.CACHE_SCHEMA[name]
        text = pl.col(name).str.strip_chars()
        if dtype == pl.Date:
            # 05FEB2021:00:00:00, or 06MAR23:00:00:00 in 2023 (chrono's %Y would read "23" as year 23)
            exprs.append(
                pl.when(text.str.len_chars() == 16)
                .then(text.str.to_date("%d%b%y:%H:%M:%S", strict=False))
                .otherwise(text.str.to_date("%d%b%Y:%H:%M:%S", strict=False))
                .alias(name)
            )
        elif dtype in (pl.String, pl.Categorical):
            exprs.append(text.cast(dtype).alias(name))
        else:
            exprs.append(text.cast(dtype, strict=False).alias(name))
    typed = raw.select(pl.col("_line"), *exprs)
    for name in names:
        if catalog.CACHE_SCHEMA[name] in (pl.String, pl.Categorical, pl.Date):
            continue
        bad = raw["_line"].filter(typed[name].is_null() & raw[name].is_not_null() & (raw[name].str.strip_chars() != ""))
        if len(bad):
            line = int(bad[0])
            value = raw.filter(pl.col("_line") == line)[name][0]
            kind = "required" if name in catalog.REQUIRED_COLUMNS else "optional"
            raise IngestError(
                f"{where}: {kind} column {name}, line {line}: cannot read {value!r} as "
                f"{catalog.CACHE_SCHEMA[name]} ({len(bad)} bad value(s) in this block)"
            )
    return typed.drop("_line")


# ---------------------------------------------------------------- cache + manifest
def _zip_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"zip": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ingest manifest %s is unreadable; every year will be re-ingested", path)
        return {}


def _is_current(entry: dict | None, zip_path: Path, parquet: Path) -> bool:
    if not entry or not parquet.exists() or entry.get("schema_version") != catalog.CACHE_SCHEMA_VERSION:
        return False
    now = _zip_fingerprint(zip_path)
    if entry.get("size") != now["size"] or entry.get("zip") != now["zip"]:
        return False
    if entry.get("mtime_ns") == now["mtime_ns"]:
        return True
    return entry.get("sha256") == archive.file_sha256(zip_path)  # touched but identical


def ingest_year(zip_path: Path, year: int, cache_dir: Path) -> dict:
    started = time.perf_counter()
    frame = read_census_zip(zip_path, year)
    target = cache_path(cache_dir, year)
    atomic.write_parquet(target, frame)
    entry = {
        **_zip_fingerprint(zip_path),
        "sha256": archive.file_sha256(zip_path),
        "rows": frame.height,
        "parquet": target.name,
        "schema_version": catalog.CACHE_SCHEMA_VERSION,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("ingested %d: %d rows from %s in %.1fs", year, frame.height, Path(zip_path).name, entry["seconds"])
    return entry


def ingest(raw_dir: Path, cache_dir: Path, years: list[int] | None = None, jobs: int = 2, force: bool = False, progress=None) -> IngestReport:
    """Ingest every requested year found in raw_dir; unchanged years are skipped."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
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
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(ingest_year, available[y], y, cache_dir): y for y in todo}
        for future in as_completed(futures):
            year = futures[future]
            try:
                entry = future.result()
            except (IngestError, archive.ArchiveError, OSError) as exc:
                report.failed[year] = str(exc)
                log.error("ingest %d failed: %s", year, exc)
            else:
                with lock:
                    manifest[str(year)] = entry
                    atomic.write_json(cache_dir / MANIFEST, manifest)
                report.written.append(year)
            if progress is not None:
                progress(year)
    report.written.sort()
    return report


def load_cache(cache_dir: Path, years: list[int]) -> pl.DataFrame:
    """All cached years as one frame (the panel's input)."""
    paths = []
    for year in years:
        path = cache_path(cache_dir, year)
        if not path.exists():
            raise IngestError(f"year {year}: no cache file {path}; run `censo-forecast ingest` first")
        paths.append(path)
    return pl.concat([pl.read_parquet(p) for p in paths], how="vertical")


def cached_years(cache_dir: Path) -> list[int]:
    manifest = _load_manifest(cache_dir)
    return sorted(int(y) for y in manifest if cache_path(cache_dir, int(y)).exists())


__all__ = ["IngestError", "IngestReport", "ingest", "ingest_year", "read_census_zip", "load_cache", "raw_zips", "cache_path", "cached_years"]
