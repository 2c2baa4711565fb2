"""`censo-forecast demography download`: births and population by age from DATASUS, into a
typed Parquet cache in the documented format (`tables`), beside the census cache.

- Births: SINASC's microdata, one file per state of the mother's residence and year
  (`DN{UF}{YYYY}.dbc`): the final files (NOV/DNRES) where they exist, else the preliminary
  ones (PRELIM/DNRES, marked `preliminary`). Counted by CODMUNRES (the mother's municipality
  of residence) and the year of DTNASC. A code without a municipality (xx0000, blank) is
  kept as the state's "ignored" row, which reading drops and says so.
- Population: DATASUS's estimates by single age and sex (`IBGE/POPSVS/POPSBR{YY}.zip`,
  one .dbf: COD_MUN, ANO, SEXO, IDADE, POP), summed over sex for ages 0-17.
- Each file goes to raw/<kind>/NAME through NAME.part (resumed, retried: `ftp`), its size
  checked against the server's and its content decoded before it is renamed into place; a
  manifest (size, modification time, sha256) tells an unchanged file, so a rerun fetches
  only what changed. A file that fails to decode is fetched once more, then reported.
- The tables are rewritten atomically from every file held, so a crash leaves the last
  complete ones.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from censo_forecast import atomic, runlog, storage
from censo_forecast.demography import dbf
from censo_forecast.demography.ftp import FtpError, FtpOptions, NotOnServer, Server
from censo_forecast.inep import catalog

log = logging.getLogger(__name__)

SINASC_FINAL = "/dissemin/publicos/SINASC/NOV/DNRES"
SINASC_PRELIMINARY = "/dissemin/publicos/SINASC/PRELIM/DNRES"
POPULATION_FOLDER = "/dissemin/publicos/IBGE/POPSVS"
BIRTHS_FILE, POPULATION_FILE = "nascidos_vivos.parquet", "populacao_idade.parquet"
MANIFEST = "manifest.json"
MAX_AGE = 17
_BIRTHS_NAME = re.compile(r"^DN([A-Z]{2})(\d{4})\.DBC$", re.IGNORECASE)
_POPULATION_NAME = re.compile(r"^POPSBR(\d{2})\.ZIP$", re.IGNORECASE)
UF_CODES = {abbreviation: code for code, abbreviation in catalog.UF_ABBREVIATIONS.items()}


@dataclass
class DemographyReport:
    downloaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file -> why
    tables: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _File:
    kind: str  # "sinasc" or "popsvs"
    folder: str
    name: str
    year: int
    preliminary: bool = False

    @property
    def remote(self) -> str:
        return f"{self.folder}/{self.name}"


def _population_year(two_digits: str) -> int:
    value = int(two_digits)
    return 1900 + value if value >= 80 else 2000 + value


def discover(server: Server, years: list[int] | None, states: list[str]) -> tuple[list[_File], list[str]]:
    """The files to fetch, final births over preliminary, and the (state, year)s with neither."""
    def by_name(folder: str) -> dict[str, str]:  # DNAL2015.DBC -> the server's spelling of it
        return {n.upper(): n for n in server.listing(folder) if _BIRTHS_NAME.match(n)}

    final, preliminary = by_name(SINASC_FINAL), by_name(SINASC_PRELIMINARY)
    offered = sorted({int(n[4:8]) for n in (*final, *preliminary)})
    wanted = years if years is not None else offered
    files, gaps = [], []
    for year in wanted:
        for uf in states:
            key = f"DN{uf}{year}.DBC"
            if key in final:
                files.append(_File("sinasc", SINASC_FINAL, final[key], year))
            elif key in preliminary:
                files.append(_File("sinasc", SINASC_PRELIMINARY, preliminary[key], year, preliminary=True))
            else:
                gaps.append(f"{uf} {year}")
    population = [_File("popsvs", POPULATION_FOLDER, n, _population_year(m.group(1)))
                  for n in server.listing(POPULATION_FOLDER) if (m := _POPULATION_NAME.match(n))]
    if years is not None:  # the estimates of the same span of years
        population = [f for f in population if min(years) <= f.year <= max(years)]
    return files + sorted(population, key=lambda f: f.year), gaps


def _births(data: bytes, file: _File) -> pl.DataFrame:
    """A SINASC file's births per (cod_mun6, year): residence code as 6 digits (a 7-digit one
    loses its check digit; a blank or malformed one is the state's ignored row, xx0000)."""
    cols = dbf.columns(dbf.decompress_dbc(data), ("CODMUNRES", "DTNASC"))
    raw = pl.DataFrame({"code": cols["CODMUNRES"].astype(str), "date": cols["DTNASC"].astype(str)},
                       schema={"code": pl.String, "date": pl.String})
    state = UF_CODES[file.name[2:4].upper()] * 10_000
    code = pl.col("code")
    six = pl.when(code.str.len_chars() == 7).then(code.str.slice(0, 6)).otherwise(code).cast(pl.Int64, strict=False)
    frame = raw.select(
        pl.when(six.is_between(110_001, 539_999) & (six % 10_000 != 0)).then(six).otherwise(state).alias("cod_mun6"),
        pl.col("date").str.slice(4, 4).cast(pl.Int32, strict=False).fill_null(file.year).alias("year"),
    )
    return frame.group_by("cod_mun6", "year").agg(pl.len().cast(pl.Int64).alias("live_births")).with_columns(
        pl.lit(file.preliminary).alias("preliminary"))


def _population(data: bytes) -> pl.DataFrame:
    """A POPSBRyy.zip's population per (cod_mun6, year, age), ages 0-17, both sexes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next((n for n in archive.namelist() if n.lower().endswith(".dbf")), None)
        if member is None:
            raise dbf.DbfError(f"no .dbf table among {archive.namelist()}")
        table = archive.read(member)
    cols = dbf.columns(table, ("COD_MUN", "ANO", "IDADE", "POP"))
    frame = pl.DataFrame({k.lower(): pl.Series(v.astype(str)) for k, v in cols.items()}).select(
        pl.col("cod_mun").str.slice(0, 6).cast(pl.Int64, strict=False).alias("cod_mun6"),
        pl.col("ano").cast(pl.Int32, strict=False).alias("year"),
        pl.col("idade").cast(pl.Int32, strict=False).alias("age"),
        pl.col("pop").cast(pl.Float64, strict=False).alias("pop"),
    )
    return frame.filter(pl.col("age").is_between(0, MAX_AGE) & pl.col("cod_mun6").is_not_null()).group_by(
        "cod_mun6", "year", "age").agg(pl.col("pop").sum().round(0).cast(pl.Int64))


def _decode(data: bytes, file: _File) -> pl.DataFrame:
    return _births(data, file) if file.kind == "sinasc" else _population(data)


def _fetch(server: Server, file: _File, dest: Path, manifest: dict, report: DemographyReport) -> pl.DataFrame | None:
    """One file fetched (or found unchanged) and decoded; None when it failed (reported)."""
    url = server.describe(file.remote)
    try:
        size, modified = server.stat(file.remote)
        entry = manifest.get(file.name)
        if (entry and dest.exists() and entry.get("size") == size and entry.get("modified") == modified
                and entry.get("sha256") == storage.sha256(dest)):
            report.unchanged.append(file.name)
            return _decode(dest.read_bytes(), file)
        part = dest.with_name(dest.name + ".part")
        for attempt in (1, 2):
            server.fetch(file.remote, part, size)
            try:
                decoded = _decode(part.read_bytes(), file)
                break
            except (dbf.DbfError, zipfile.BadZipFile) as exc:
                part.unlink(missing_ok=True)
                if attempt == 2:
                    raise FtpError(f"{url}: fetched twice, damaged both times ({exc})") from None
                log.warning("%s: damaged (%s); fetching it again", url, exc)
        part.replace(dest)
        manifest[file.name] = {"size": size, "modified": modified, "sha256": storage.sha256(dest),
                               "preliminary": file.preliminary, "url": url}
        report.downloaded.append(file.name)
        return decoded
    except NotOnServer as exc:
        report.failed[file.name] = str(exc)
    except (FtpError, dbf.DbfError, zipfile.BadZipFile) as exc:
        report.failed[file.name] = f"{url}: {exc}" if url not in str(exc) else str(exc)
    return None


def download(dest: Path, opts: FtpOptions, years: list[int] | None = None, states: list[str] | None = None) -> DemographyReport:
    """Fetch what is missing or changed into `dest`/raw, then (re)write the two tables there."""
    dest = Path(dest)
    states = [s.upper() for s in (states or list(UF_CODES))]
    unknown = [s for s in states if s not in UF_CODES]
    if unknown:
        raise FtpError(f"unknown state(s) {unknown}; expected abbreviations such as {', '.join(list(UF_CODES)[:5])}")
    for kind in ("sinasc", "popsvs"):
        (dest / "raw" / kind).mkdir(parents=True, exist_ok=True)
    manifest = storage.read_json_dict(dest / MANIFEST, "demography manifest")
    server = Server(opts)
    report = DemographyReport()
    try:
        files, gaps = discover(server, years, states)
        if gaps:
            log.warning("SINASC has no file for %d state-year(s): %s%s", len(gaps), ", ".join(gaps[:10]),
                        " ..." if len(gaps) > 10 else "")
        births: list[pl.DataFrame] = []
        population: list[pl.DataFrame] = []
        with runlog.Progress("demography", len(files), unit="file") as bar:
            for file in files:
                decoded = _fetch(server, file, dest / "raw" / file.kind / file.name, manifest, report)
                atomic.write_json(dest / MANIFEST, manifest)  # after each file: a crash keeps what finished
                if decoded is not None:
                    (births if file.kind == "sinasc" else population).append(decoded)
                bar.update()
    finally:
        server.close()
    if births:
        table = pl.concat(births).group_by("cod_mun6", "year").agg(pl.col("live_births").sum(), pl.col("preliminary").any())
        atomic.write_parquet(dest / BIRTHS_FILE, table.sort("cod_mun6", "year"))
        report.tables.append(dest / BIRTHS_FILE)
    if population:
        table = pl.concat(population).group_by("cod_mun6", "year", "age").agg(pl.col("pop").sum())
        atomic.write_parquet(dest / POPULATION_FILE, table.sort("cod_mun6", "year", "age"))
        report.tables.append(dest / POPULATION_FILE)
    return report
