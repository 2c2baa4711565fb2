"""INEP yearly zips -> one typed Parquet file per year, reading only the columns we need.

The data member is inflated straight from the zip (ISA-L when available, CRC-checked; never
extracted to disk) and transcoded from latin-1 piece by piece, then polars parses it once,
projecting the needed columns directly to their cache types. Only a file that fails this
fast path is re-read as text, so that a bad value in a column we need is reported with its
year, member, column, line and text, while damage in columns we skip (spreadsheet mangling,
'.' placeholders) costs nothing.
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

import numpy as np
import polars as pl

from censo_forecast import atomic
from censo_forecast.inep import archive, catalog

log = logging.getLogger(__name__)

PIECE_BYTES = 2 * 1024 * 1024  # compressed bytes per read (about 12 MB inflated)
_SEPARATOR_BYTE = ord(catalog.CSV_SEPARATOR)
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
        with archive.open_zip(zip_path) as zf:
            member = archive.data_member(zf, year, zip_path)
    except archive.ArchiveError as exc:
        raise IngestError(f"year {year}: {exc}") from None
    where = f"{zip_path}, member {member.filename}, year {year}"
    try:
        data, separators = _inflate_as_utf8(zip_path, member)
    except (archive.ArchiveError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise IngestError(f"{where}: the member is damaged or truncated ({exc})") from None
    except NotImplementedError as exc:  # e.g. Deflate64, which Python's zipfile cannot read
        raise IngestError(f"{where}: unsupported zip compression ({exc}); re-zip it with ordinary deflate") from None
    return _parse(data, separators, year, where)


def _inflate_as_utf8(zip_path: Path, member: zipfile.ZipInfo) -> tuple[bytes, int]:
    """The member as UTF-8 bytes, plus its count of ';'. Latin-1 is one byte per character,
    so each inflated piece can be transcoded on its own: no raw copy of the file is kept."""
    pieces, separators = [], 0
    for piece in archive.iter_member(zip_path, member, PIECE_BYTES):
        separators += int(np.count_nonzero(np.frombuffer(piece, np.uint8) == _SEPARATOR_BYTE))
        pieces.append(piece if piece.isascii() else piece.decode(catalog.CSV_ENCODING).encode("utf-8"))
    data = b"".join(pieces)
    if b"\r" in data:  # spreadsheet re-saves use CRLF
        data = data.replace(b"\r\n", b"\n")
    return data, separators


def _parse(data: bytes, separators: int, year: int, where: str) -> pl.DataFrame:
    header_end = data.find(b"\n")
    header = (data if header_end < 0 else data[:header_end]).decode("utf-8").strip().split(catalog.CSV_SEPARATOR)
    if header == [""]:
        raise IngestError(f"{where}: the file is empty (no header line)")
    missing = [c for c in catalog.REQUIRED_COLUMNS if c not in header]
    if missing:
        raise IngestError(f"{where}: required column(s) missing from the header: {', '.join(missing)}")
    names = [c for c in header if c in catalog.CACHE_SCHEMA]
    try:
        frame = _read_csv(data, {n: _parse_type(n) for n in names})
    except pl.exceptions.PolarsError:
        # Slow path, only for a file that fails: read as text to name the line and value at fault.
        _check_field_counts(data, len(header), where)
        _strict_cast(_read_csv(data, {n: pl.String() for n in names}, where), names, where)
    if frame.height == 0:
        raise IngestError(f"{where}: the file has a header but no rows")
    # polars ignores surplus fields, so a ragged row shows as a separator count mismatch
    if separators != (frame.height + 1) * (len(header) - 1):
        _check_field_counts(data, len(header), where)
    frame = frame.with_columns(_finish(n, frame) for n in names if catalog.CACHE_SCHEMA[n] in (pl.Date, pl.Categorical))
    frame = frame.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in catalog.OPTIONAL_COLUMNS.items() if name not in names
    )
    wrong_year = frame.filter(pl.col("NU_ANO_CENSO") != year)
    if wrong_year.height:
        raise IngestError(
            f"{where}: NU_ANO_CENSO is {wrong_year['NU_ANO_CENSO'][0]} on {wrong_year.height} row(s), expected {year}"
        )
    return frame.select(list(catalog.CACHE_SCHEMA))


def _read_csv(data: bytes, dtypes: dict, where: str | None = None) -> pl.DataFrame:
    """where=None: the fast typed read (errors propagate); else a text read with file line numbers."""
    try:
        return pl.read_csv(
            data,
            separator=catalog.CSV_SEPARATOR,
            columns=list(dtypes),
            schema_overrides=dtypes,
            infer_schema=False,
            quote_char=None,
            null_values=["."],
            row_index_name=None if where is None else "_line",
            row_index_offset=2,  # the header is line 1
        )
    except pl.exceptions.PolarsError as exc:
        if where is None:
            raise
        raise IngestError(f"{where}: the rows do not parse as ';'-separated fields ({exc})") from None


def _parse_type(name: str) -> pl.DataType:
    dtype = catalog.CACHE_SCHEMA[name]
    return pl.String() if dtype in (pl.Date, pl.Categorical, pl.String) else dtype


def _finish(name: str, frame: pl.DataFrame) -> pl.Expr:
    text = pl.col(name).str.strip_chars()
    if catalog.CACHE_SCHEMA[name] == pl.Categorical:
        return text.cast(pl.Categorical())
    # 05FEB2021:00:00:00, or 06MAR23:00:00:00 in 2023 (chrono's %Y would read "23" as year 23)
    sample = frame[name].drop_nulls().head(1).to_list()
    two_digit = bool(sample) and len(sample[0].strip()) == 16
    return text.str.to_date("%d%b%y:%H:%M:%S" if two_digit else "%d%b%Y:%H:%M:%S", strict=False).alias(name)


def _check_field_counts(data: bytes, width: int, where: str) -> None:
    for offset, row in enumerate(data.split(b"\n")):
        fields = row.count(catalog.CSV_SEPARATOR.encode()) + 1
        if row.strip() and fields != width:
            raise IngestError(f"{where}: line {offset + 1} has {fields} fields, the header has {width}")


def _strict_cast(raw: pl.DataFrame, names: list[str], where: str) -> None:
    """Cast text columns one by one and raise on the first value that does not fit."""
    for name in names:
        text = raw[name].str.strip_chars()
        typed = text.cast(_parse_type(name), strict=False)
        bad = raw["_line"].filter(typed.is_null() & text.is_not_null() & (text != ""))
        if len(bad):
            value = raw[name][int(bad[0]) - 2]
            kind = "required" if name in catalog.REQUIRED_COLUMNS else "optional"
            raise IngestError(
                f"{where}: {kind} column {name}, line {int(bad[0])}: cannot read {value!r} as "
                f"{catalog.CACHE_SCHEMA[name]} ({len(bad)} bad value(s) in this column)"
            )
    raise IngestError(f"{where}: the file does not parse, but no single value is at fault")


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
