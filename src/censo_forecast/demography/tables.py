"""The documented format of demographic files, read into typed frames.

A folder holds CSV (UTF-8, comma-separated) or Parquet files of two kinds, told apart by
their columns (`../shared/demography/` is in this format):

- births: `cod_mun7` (IBGE's 7-digit code, the census's `CO_MUNICIPIO`) or `cod_mun6`
  (DATASUS's 6 digits, without the check digit), `year` (or `ano`), `live_births` (or
  `nascidos_vivos`, `births`), and optionally `preliminary` (true/false): live births by
  the mother's municipality of residence and year of birth (SINASC). A row without a
  municipality ("MUNICIPIO IGNORADO", code xx0000) is dropped: ratios of cohorts are per
  municipality, and a state's unplaced births cannot be given to one of them.
- population, by single age: the code, `year`, `age` (or `idade`), `pop` (or `populacao`);
  or by the age groups of DATASUS's estimates: the code, `year`, `pop_0_3`, `pop_4_5`,
  `pop_6`, `pop_6_14`, `pop_15_17`. Single ages win where both give a municipality-year.

Municipalities are keyed by their 6 digits (the 7-digit code over 10), which both
sources share; the census's codes are matched the same way.

Real-world care:
- a municipality created after the first birth year (754 of them in SINASC since 1996)
  has no births of its own before it existed; they were counted in its parent's. Without
  a table of parents offline, its earlier births are its state's, times its share of the
  state's births in its first `CREATION_SHARE_YEARS` years (`backcast` marks them).
- preliminary years are marked: the file's `preliminary` column, or else the last
  `PRELIMINARY_YEARS` years of the file (SINASC's final data come about 18 months after
  the year; the shared files mark 2023-2025 preliminary).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from censo_forecast.inep import catalog

log = logging.getLogger(__name__)

MUNICIPALITY, YEAR = "cod_mun6", "ano"
CODE7 = "cod_mun7"
BIRTHS, POPULATION, AGE = "nascidos_vivos", "populacao", "idade"
PRELIMINARY, BACKCAST = "preliminar", "estimado_pela_uf"
PRELIMINARY_YEARS = 3
CREATION_SHARE_YEARS = 3
_ALIASES = {
    CODE7: ("cod_mun7", "CO_MUNICIPIO", "co_municipio"),
    MUNICIPALITY: ("cod_mun6", "CO_MUNICIPIO6"),
    YEAR: ("year", "ano", "NU_ANO"),
    BIRTHS: ("live_births", "nascidos_vivos", "births"),
    AGE: ("age", "idade"),
    POPULATION: ("pop", "populacao", "population"),
    PRELIMINARY: ("preliminary", "preliminar"),
}
AGE_GROUPS = ("pop_0_3", "pop_4_5", "pop_6", "pop_6_14", "pop_15_17")
FORMAT = ("births: cod_mun7 (or cod_mun6), year, live_births [, preliminary]; population: cod_mun7, year, age, pop "
          "or cod_mun7, year, " + ", ".join(AGE_GROUPS))


class DemographyError(ValueError):
    """A demographic file that cannot be read; the message names the file and the column."""


@dataclass(frozen=True)
class Demography:
    """Births per (municipality, year) and population per (municipality, year, stage's ages)."""

    births: pl.DataFrame  # cod_mun6, ano, nascidos_vivos, preliminar, estimado_pela_uf
    population: pl.DataFrame  # cod_mun6, ano, populacao_<FLAG> per stage with ages
    source: str
    digest: str = ""  # of the frames' content: a checkpoint made with other demography is redone

    def describe(self) -> str:
        years = self.births.select(pl.col(YEAR).min().alias("first"), pl.col(YEAR).max().alias("last")).row(0)
        prelim = self.births.filter(pl.col(PRELIMINARY))[YEAR].unique().sort().to_list()
        text = (f"{self.source}: births {years[0]}-{years[1]} for {self.births[MUNICIPALITY].n_unique()} municipalities"
                + (f" ({', '.join(map(str, prelim))} preliminary)" if prelim else ""))
        if self.population.height:
            span = self.population.select(pl.col(YEAR).min().alias("first"), pl.col(YEAR).max().alias("last")).row(0)
            text += f"; population {span[0]}-{span[1]}"
        return text


def municipality6(code7: pl.Expr) -> pl.Expr:
    """IBGE's 7-digit municipality code without its check digit: DATASUS's 6 digits."""
    return code7 // 10


def population_column(flag: str) -> str:
    return f"{POPULATION}_{flag}"


def _renamed(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
    """The frame with our column names, and {our name: the file's} for messages."""
    present = {}
    for name, aliases in _ALIASES.items():
        found = next((a for a in aliases if a in frame.columns), None)
        if found is not None:
            present[found] = name
    named = {ours: theirs for theirs, ours in present.items()}
    frame = frame.rename(present)
    if CODE7 in frame.columns:  # the 7-digit code wins: the 6 digits are derived from it
        code = frame[CODE7].cast(pl.String).str.strip_chars()
        six = pl.Series(MUNICIPALITY, code.cast(pl.Int64, strict=False)) // 10
        if MUNICIPALITY in frame.columns:  # a row without a 7-digit code (MUNICIPIO IGNORADO) keeps its 6
            six = pl.Series(MUNICIPALITY, pl.select(pl.coalesce(six, frame[MUNICIPALITY].cast(pl.String).str.strip_chars()
                                                                  .cast(pl.Int64, strict=False))).to_series())
        named.setdefault(MUNICIPALITY, named[CODE7])
        frame = frame.drop(CODE7).with_columns(six.cast(pl.String).alias(MUNICIPALITY))
    return frame, named


def _read(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema_length=0)  # every column as text: codes keep their digits
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise DemographyError(f"{path}: cannot read it as {path.suffix.lstrip('.').upper() or 'CSV'} ({exc})") from None


def _typed(frame: pl.DataFrame, path: Path, columns: Mapping[str, type[pl.DataType]], named: dict[str, str]) -> pl.DataFrame:
    """The columns cast to their types; a value that is not a number names the file and column."""
    out = []
    for name, dtype in columns.items():
        raw = frame[name]
        text = raw.cast(pl.String).str.strip_chars()
        value = text.cast(dtype, strict=False) if raw.dtype == pl.String else raw.cast(dtype, strict=False)
        bad = (value.is_null() & text.is_not_null() & (text != "")).arg_true()
        if len(bad):
            row = int(bad[0])
            raise DemographyError(f"{path}: column {named.get(name, name)!r} row {row + 2} holds {text[row]!r}, not a number "
                                  f"(format: {FORMAT})")
        out.append(value.alias(name))
    return pl.DataFrame(out)


def _births(frame: pl.DataFrame, path: Path, named: dict[str, str]) -> pl.DataFrame:
    flag = PRELIMINARY in frame.columns
    typed = _typed(frame, path, {MUNICIPALITY: pl.Int64, YEAR: pl.Int32, BIRTHS: pl.Float64}, named)
    if flag:
        typed = typed.with_columns(frame[PRELIMINARY].cast(pl.String).str.to_lowercase().is_in(["true", "1", "sim", "yes"])
                                   .alias(PRELIMINARY))
    ignored = typed.filter(pl.col(MUNICIPALITY).is_null() | (pl.col(MUNICIPALITY) % 10_000 == 0))  # xx0000
    if ignored.height:
        share = ignored.select(pl.col(BIRTHS).sum()).item() / max(typed.select(pl.col(BIRTHS).sum()).item(), 1.0)
        log.info("demography: %s: %d rows of births without a municipality (%.2f %% of the births) dropped; "
                 "cohort ratios are per municipality", path.name, ignored.height, 100 * share)
    typed = typed.filter(pl.col(MUNICIPALITY).is_not_null() & (pl.col(MUNICIPALITY) % 10_000 != 0))
    negative = typed.filter(pl.col(BIRTHS) < 0)
    if negative.height:
        row = negative.row(0, named=True)
        raise DemographyError(f"{path}: negative births for municipality {row[MUNICIPALITY]} in {row[YEAR]}")
    return typed


def _population(frame: pl.DataFrame, path: Path, named: dict[str, str]) -> pl.DataFrame:
    """Population per (municipality, year) of each stage's ages, from single ages or DATASUS's groups."""
    stages = [(s.flag, s.ages) for s in catalog.STAGES if s.ages is not None]
    if AGE in frame.columns:
        typed = _typed(frame, path, {MUNICIPALITY: pl.Int64, YEAR: pl.Int32, AGE: pl.Int32, POPULATION: pl.Float64}, named)
        def band(ages: tuple[int, int]) -> pl.Expr:  # null unless every age of the band is there
            rows = pl.col(AGE).is_between(*ages)
            whole = pl.col(AGE).filter(rows).n_unique() == ages[1] - ages[0] + 1
            return pl.when(whole).then(pl.col(POPULATION).filter(rows).sum())

        return typed.group_by(MUNICIPALITY, YEAR).agg(band(ages).alias(population_column(flag)) for flag, ages in stages)
    typed = _typed(frame, path, {MUNICIPALITY: pl.Int64, YEAR: pl.Int32, **dict.fromkeys(AGE_GROUPS, pl.Float64)}, named)
    seven_to_fourteen = pl.col("pop_6_14") - pl.col("pop_6")  # eight ages, split evenly
    by_band = {(0, 3): pl.col("pop_0_3"), (4, 5): pl.col("pop_4_5"), (6, 14): pl.col("pop_6_14"),
               (6, 10): pl.col("pop_6") + seven_to_fourteen * 4 / 8, (11, 14): seven_to_fourteen * 4 / 8,
               (15, 17): pl.col("pop_15_17")}
    return typed.select(MUNICIPALITY, YEAR, *(by_band[ages].alias(population_column(flag)) for flag, ages in stages))


def _kind(frame: pl.DataFrame) -> str | None:
    columns = set(frame.columns)
    if {MUNICIPALITY, YEAR} - columns:
        return None
    if BIRTHS in columns:
        return "births"
    if {AGE, POPULATION} <= columns or set(AGE_GROUPS) <= columns:
        return "population"
    return None


def with_backcast(births: pl.DataFrame) -> pl.DataFrame:
    """Births before a municipality existed: its state's, times its share of the state's in its
    first years (see the module's docstring); marked in `estimado_pela_uf`."""
    state = (pl.col(MUNICIPALITY) // 10_000).alias("_uf")
    births = births.with_columns(state, pl.lit(False).alias(BACKCAST))
    first_year = births.select(pl.col(YEAR).min()).item()
    state_totals = births.group_by("_uf", YEAR).agg(pl.col(BIRTHS).sum().alias("_state"))
    first = births.group_by(MUNICIPALITY).agg(pl.col(YEAR).min().alias("_first"), pl.col("_uf").first())
    created = first.filter(pl.col("_first") > first_year)
    if created.height == 0:
        return births.drop("_uf")
    shares = (births.join(created, on=[MUNICIPALITY, "_uf"])
              .filter(pl.col(YEAR) < pl.col("_first") + CREATION_SHARE_YEARS)
              .join(state_totals, on=["_uf", YEAR])
              .group_by(MUNICIPALITY).agg((pl.col(BIRTHS).sum() / pl.col("_state").sum()).alias("_share")))
    last_year = births.select(pl.col(YEAR).max()).item()
    years = pl.DataFrame({YEAR: list(range(first_year, last_year + 1))}, schema={YEAR: pl.Int32})
    earlier = (created.join(shares, on=MUNICIPALITY).join(years, how="cross").filter(pl.col(YEAR) < pl.col("_first"))
               .join(state_totals, on=["_uf", YEAR])
               .select(MUNICIPALITY, YEAR, (pl.col("_share") * pl.col("_state")).alias(BIRTHS), "_uf",
                       pl.lit(True).alias(BACKCAST)))
    log.info("demography: %d municipalities created after %d; their births before creation follow their state's",
             created.height, first_year)
    return pl.concat([births, earlier.with_columns(pl.lit(False).alias(PRELIMINARY))], how="diagonal").drop("_uf")


def read_folder(folder: Path) -> Demography:
    """Every CSV and Parquet file of `folder` in the documented format, as one `Demography`."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DemographyError(f"--demography {folder}: not a folder (expected CSV or Parquet files: {FORMAT})")
    births: list[pl.DataFrame] = []
    population: list[tuple[int, pl.DataFrame]] = []  # (0: single ages, 1: groups; single ages win)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
    for path in files:
        frame, named = _renamed(_read(path))
        kind = _kind(frame)
        if kind is None:
            raise DemographyError(f"{path}: not a births or population file; columns {frame.columns[:8]} (format: {FORMAT})")
        if kind == "births":
            births.append(_births(frame, path, named))
        else:
            population.append((0 if AGE in frame.columns else 1, _population(frame, path, named)))
    if not births:
        raise DemographyError(f"--demography {folder}: no births file among {[p.name for p in files]} (format: {FORMAT})")
    born = pl.concat(births, how="diagonal").group_by(MUNICIPALITY, YEAR).agg(
        pl.col(BIRTHS).sum(), pl.col(PRELIMINARY).any() if any(PRELIMINARY in b.columns for b in births) else pl.lit(None))
    if PRELIMINARY not in born.columns or born[PRELIMINARY].null_count() == born.height:
        last = born.select(pl.col(YEAR).max()).item()
        born = born.with_columns((pl.col(YEAR) > last - PRELIMINARY_YEARS).alias(PRELIMINARY))
    people = _single_ages_first(population)
    births_table = with_backcast(born.sort(MUNICIPALITY, YEAR))
    return Demography(births_table, people, str(folder), _digest(births_table, people))


def _digest(*frames: pl.DataFrame) -> str:
    content = hashlib.sha256()
    for frame in frames:
        content.update(",".join(frame.columns).encode())
        if frame.height:
            content.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return content.hexdigest()


def _single_ages_first(frames: list[tuple[int, pl.DataFrame]]) -> pl.DataFrame:
    """One population row per (municipality, year): single ages where a file has them, else groups."""
    if not frames:
        return pl.DataFrame(schema={MUNICIPALITY: pl.Int64, YEAR: pl.Int32})
    ranked = pl.concat([f.with_columns(pl.lit(rank).alias("_rank")) for rank, f in frames], how="diagonal")
    return ranked.sort("_rank", maintain_order=True).unique([MUNICIPALITY, YEAR], keep="first").drop("_rank").sort(MUNICIPALITY, YEAR)
