"""A census zip in either of INEP's layouts -> one frame with the cache's columns and types.

The layout is recognised from the zip's members, never from the year (INEP may re-publish
older years in the new layout):

- one school table, `microdados_ed_basica_YYYY.csv` (INEP's layout up to 2024);
- four tables, `Tabela_{Escola,Matricula,Turma,Docente}_YYYY[_V2].csv` (from 2025).
  Escola has one row per school, active or not; the count tables have one row per school
  with activity and hold QT_MAT_*, QT_TUR_* and QT_DOC_* respectively. They are joined
  onto Escola by CO_ENTIDADE (left join). An active school absent from every count table
  had no activity: its counts are 0. An active school absent from one count table but
  present in another (INEP's 2025 files have a few in Turma but not in Matricula) gets
  nulls for that table's counts: unknown, which the stage views treat as no students.

Whatever the layout, the frame then gets the same treatment (`_harmonise`): per-grade
counts under one set of names, offer flags derived where the files lack them, and the
counts and flags of schools that are not active set to null (unknown), so that nothing
downstream can tell which layout or year a row came from.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path

import polars as pl

from censo_forecast.inep import archive, catalog, csvread
from censo_forecast.inep.catalog import SCHOOL, YEAR
from censo_forecast.inep.csvread import IngestError

log = logging.getLogger(__name__)

KEY = SCHOOL
# what is read: the cache's columns, and the per-track grade columns that add up to a harmonised grade
SOURCE_TYPES: dict[str, pl.DataType] = {**catalog.CACHE_SCHEMA, **{c: pl.Int32() for c in catalog.GRADE_SOURCES}}


def read_census(zip_path: Path, year: int) -> pl.DataFrame:
    """The needed columns of one year's zip (a local file), in the cache's schema."""
    try:
        with archive.open_zip(zip_path) as zf:
            members = archive.census_members(zf, year, zip_path)
    except archive.ArchiveError as exc:
        raise IngestError(f"year {year}: {exc}") from None
    if archive.SINGLE_TABLE in members:
        raw, where = _member_bytes(zip_path, members[archive.SINGLE_TABLE], year)
        frame = _read(raw, SOURCE_TYPES, where, catalog.REQUIRED_IN_FILES, year)
    else:
        frame = _join_tables(zip_path, members, year)
    return _harmonise(frame)


def _member_bytes(zip_path: Path, member: zipfile.ZipInfo, year: int) -> tuple[bytes, str]:
    where = f"{zip_path}, member {member.filename}, year {year}"
    try:
        return archive.read_member(zip_path, member), where
    except archive.UnsupportedCompression as exc:
        raise IngestError(f"year {year}: {exc}") from None
    except (archive.ArchiveError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise IngestError(f"{where}: the member is damaged or truncated ({exc})") from None


def _read(raw: bytes, types: dict, where: str, required, year: int) -> pl.DataFrame:
    frame = csvread.read_table(raw, types, where, required=tuple(required))
    wrong_year = frame.filter(pl.col(YEAR) != year)
    if wrong_year.height:
        raise IngestError(f"{where}: NU_ANO_CENSO is {wrong_year[YEAR][0]} on {wrong_year.height} row(s), "
                          f"expected {year}")
    return frame


def _table_frame(zip_path: Path, member: zipfile.ZipInfo, table: str, year: int) -> tuple[pl.DataFrame, str]:
    """One table's own columns (each column family lives in one table), CO_ENTIDADE and the year."""
    raw, where = _member_bytes(zip_path, member, year)
    own = {c: t for c, t in SOURCE_TYPES.items() if catalog.table_of(c) == table or c in (KEY, YEAR)}
    required = [c for c in catalog.REQUIRED_IN_FILES if catalog.table_of(c) == table] + [KEY, YEAR]
    frame = _read(raw, own, where, dict.fromkeys(required), year)
    if table != catalog.SCHOOL_TABLE:
        frame = frame.drop(YEAR)
        repeated = frame.filter(pl.col(KEY).is_duplicated())[KEY].unique().sort()
        if len(repeated):
            raise IngestError(f"{where}: column {KEY}: {len(repeated)} school(s) appear more than once in a table that "
                              f"has one row per school (e.g. {repeated.head(3).to_list()})")
    return frame, where


def _join_tables(zip_path: Path, members: dict[str, zipfile.ZipInfo], year: int) -> pl.DataFrame:
    """Escola with the count tables joined on (left join); see the module's docstring for the rule."""
    school, _ = _table_frame(zip_path, members[catalog.SCHOOL_TABLE], catalog.SCHOOL_TABLE, year)
    present = []
    for table in catalog.COUNT_TABLES:
        counts, where = _table_frame(zip_path, members[table], table, year)
        strangers = counts.join(school.select(KEY), on=KEY, how="anti")[KEY].sort()
        if len(strangers):
            raise IngestError(f"{where}: column {KEY}: {len(strangers)} school(s) of Tabela_{table} are not in "
                              f"Tabela_Escola (e.g. {strangers.head(3).to_list()})")
        school = school.join(counts.with_columns(pl.lit(True).alias(f"_in_{table}")), on=KEY, how="left",
                             maintain_order="left")
        present.append(f"_in_{table}")
    active = pl.col("TP_SITUACAO_FUNCIONAMENTO") == catalog.SITUATION_ACTIVE
    seen = [pl.col(p).fill_null(False) for p in present]
    no_activity = active & ~pl.any_horizontal(seen)
    _log_absences(school, year, active, seen, present)
    count_columns = [c for c in school.columns if catalog.table_of(c) != catalog.SCHOOL_TABLE]
    return (school.with_columns(pl.when(no_activity).then(pl.col(c).fill_null(0)).otherwise(pl.col(c)) for c in count_columns)
            .drop(present))


def _log_absences(school: pl.DataFrame, year: int, active: pl.Expr, seen: list[pl.Expr], present: list[str]) -> None:
    stats = school.select(
        active.sum().alias("active"),
        (active & ~pl.any_horizontal(seen)).sum().alias("none"),
        *((active & ~s & pl.any_horizontal(seen)).sum().alias(p) for s, p in zip(seen, present, strict=True)),
    ).row(0, named=True)
    log.info("year %d (tables): %d active schools; %d in no count table (no activity: counts 0)", year,
             stats["active"], stats["none"])
    for p in present:
        if stats[p]:
            log.warning("year %d: %d active school(s) absent from Tabela_%s but present in another count table: "
                        "their %s counts are unknown (null; no students in that stage for the forecast)",
                        year, stats[p], p.removeprefix("_in_"), catalog.COUNT_TABLES[p.removeprefix("_in_")] + "*")


def _added(columns: tuple[str, ...]) -> pl.Expr:
    """The columns' sum, null when all are blank (a missing count is not a zero)."""
    if len(columns) == 1:
        return pl.col(columns[0])
    return pl.when(pl.any_horizontal(pl.col(c).is_not_null() for c in columns)).then(pl.sum_horizontal(columns))


def _harmonise(frame: pl.DataFrame) -> pl.DataFrame:
    """The cache's columns from either layout (see the module's docstring)."""
    grades = catalog.grade_sources(frame.columns)
    frame = frame.with_columns(_added(sources).cast(pl.Int32).alias(name) for name, sources in grades.items())
    derived = [catalog.offer_flag(s) for s in catalog.STAGES if s.flag not in frame.columns]
    if derived:
        log.info("offer flags derived from enrollment (absent from the files): %s",
                 ", ".join(s.flag for s in catalog.STAGES if s.flag not in frame.columns))
        frame = frame.with_columns(derived)
    frame = frame.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in catalog.OPTIONAL_COLUMNS.items()
                               if c not in frame.columns)
    active = pl.col("TP_SITUACAO_FUNCIONAMENTO") == catalog.SITUATION_ACTIVE
    frame = frame.with_columns(pl.when(active).then(pl.col(c)).otherwise(None).alias(c) for c in catalog.ACTIVITY_COLUMNS)
    return frame.select(pl.col(c).cast(t) for c, t in catalog.CACHE_SCHEMA.items())
