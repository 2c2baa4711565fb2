"""Everything censo-forecast knows about INEP's School Census files, in one place.

Other modules ask this one for URLs, member names, the CSV dialect, column sets
and the stage table; none of them spell an INEP column name by substring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import polars as pl

FIRST_YEAR = 2007
DEFAULT_FIRST_YEAR = 2011
LATEST_KNOWN_YEAR = 2025
SINGLE_TABLE_LAST_YEAR = 2024  # INEP's own layout; from 2025 the census comes as several tables

BASE_URL = "https://download.inep.gov.br/dados_abertos/"
LISTING_URL = (
    "https://www.gov.br/inep/pt-br/acesso-a-informacao/dados-abertos/microdados/censo-escolar"
)
INEP_HOST = "download.inep.gov.br"
# Links on the listing page; a trailing underscore marks a re-publication (2025's multi-table layout).
LISTING_LINK_RE = re.compile(r"microdados_censo_escolar_(\d{4})(_?)\.zip", re.IGNORECASE)

# INEP's column names the code reads as keys (spelled here once; CACHE_SCHEMA types them).
YEAR = "NU_ANO_CENSO"
SCHOOL = "CO_ENTIDADE"

# The CSV dialect of every year: ';', latin-1 (cp1252 superset is harmless for reading), no quoting.
CSV_SEPARATOR = ";"
CSV_ENCODING = "latin-1"


def zip_name(year: int, republished: bool = False) -> str:
    """microdados_censo_escolar_2025.zip; a re-publication ends in '_' (..._2025_.zip)."""
    return f"microdados_censo_escolar_{year}{'_' if republished else ''}.zip"


def zip_url(year: int, base_url: str = BASE_URL, republished: bool = False) -> str:
    return base_url.rstrip("/") + "/" + zip_name(year, republished)


def data_member_re(year: int) -> re.Pattern[str]:
    """The data CSV, found by base name only: folder names are cp437-garbled and vary by year."""
    return re.compile(rf"(?:^|/)microdados_ed_basica_{year}\.csv$", re.IGNORECASE)


def md5_member_re(year: int) -> re.Pattern[str]:
    """INEP's md5 list (`<md5> *<file name>` lines) in `dados/`: md5_microdados_ed_basica_YYYY.txt,
    or any md5*.txt there in the multi-table packages."""
    return re.compile(r"(?:^|/)dados/md5[^/]*\.txt$|(?:^|/)md5_microdados_ed_basica_" + str(year) + r"\.txt$", re.IGNORECASE)


# ---------------------------------------------------------------- the multi-table layout (2025)
# Escola has one row per school, active or not; the count tables one row per school with
# activity, keyed by CO_ENTIDADE. Each count family lives in exactly one table.
SCHOOL_TABLE = "Escola"
COUNT_TABLES = {"Matricula": "QT_MAT_", "Turma": "QT_TUR_", "Docente": "QT_DOC_"}
TABLES = (SCHOOL_TABLE, *COUNT_TABLES)


def table_member_re(table: str, year: int) -> re.Pattern[str]:
    """A table's CSV by base name: Tabela_Escola_2025.csv, Tabela_Escola_2025_V2.csv, any case, any folder."""
    return re.compile(rf"(?:^|/)tabela_{table}_{year}(?:_v\d+)?\.csv$", re.IGNORECASE)


def any_table_re(year: int) -> re.Pattern[str]:
    """Every table of a multi-table year (Gestor_Escolar and Curso_Tecnico too), for integrity checks."""
    return re.compile(rf"(?:^|/)tabela_[a-z_]+_{year}(?:_v\d+)?\.csv$", re.IGNORECASE)


def table_of(column: str) -> str:
    """The table of the multi-table layout that holds a cache column."""
    return next((table for table, prefix in COUNT_TABLES.items() if column.startswith(prefix)), SCHOOL_TABLE)


@dataclass(frozen=True)
class Release:
    """One package of a multi-table year: its zip, folder and table file names."""

    republished: bool

    def zip_name(self, year: int) -> str:
        return zip_name(year, self.republished)

    def folder(self, year: int) -> str:
        return f"microdados_censo_escolar_{year}{'_v2' if self.republished else ''}"

    def member(self, table: str, year: int) -> str:
        # the re-publication's Gestor_Escolar table has a lower-case 'v2', the others 'V2'
        suffix = ("_v2" if table == "Gestor_Escolar" else "_V2") if self.republished else ""
        return f"{self.folder(year)}/dados/Tabela_{table}_{year}{suffix}.csv"

    def header(self, table: str) -> tuple[str, ...]:
        """The table's header as INEP wrote it (see columns/2025/README for what is partial)."""
        return _table_header(table, self.republished)


FIRST_RELEASE, REPUBLICATION = Release(False), Release(True)


@cache
def _table_header(table: str, republished: bool) -> tuple[str, ...]:
    v2 = _read_columns(f"2025/Tabela_{table}_2025_V2.txt") if table in TABLES else ()
    if republished:
        return v2 or _read_columns(f"2025/Tabela_{table}_2025.txt")
    first = _read_columns(f"2025/Tabela_{table}_2025.txt")
    if table in COUNT_TABLES:
        # the first release's count tables are known without their identification block
        # (Turma's only in part): that block is V2's, then the known counts, then V2's others
        ident = tuple(c for c in v2 if not c.startswith(COUNT_TABLES[table]))
        counts = [c for c in first if c.startswith(COUNT_TABLES[table])]
        counts += [c for c in v2 if c.startswith(COUNT_TABLES[table]) and c not in counts and table == "Turma"]
        return ident + tuple(counts)
    return first


def _read_columns(name: str) -> tuple[str, ...]:
    path = resources.files(__package__).joinpath("columns")
    for part in name.split("/"):
        path = path.joinpath(part)
    return tuple(line.strip() for line in path.read_text("ascii").splitlines() if line.strip())


def zip_folder(year: int) -> str:
    """The top folder INEP uses inside each year's zip."""
    if year <= 2021:
        return f"microdados_ed_basica_{year}"
    if year == 2022:
        return "Microdados do Censo Escolar da Educação Básica 2022"
    return f"microdados_censo_escolar_{year}"


def data_file_name(year: int) -> str:
    """The one-table layout's data file, as INEP's md5 list names it."""
    return f"microdados_ed_basica_{year}.csv"


def data_member_name(year: int) -> str:
    """The data file inside the zip (2020's ends in upper-case .CSV)."""
    name = data_file_name(year)
    return f"{zip_folder(year)}/dados/{name[:-4]}.CSV" if year == 2020 else f"{zip_folder(year)}/dados/{name}"


def md5_member_name(year: int, folder: str, multi_table: bool = False) -> str:
    """INEP's md5 list in a zip's `dados/` (what `md5_member_re` finds)."""
    stem = "microdados_censo_escolar" if multi_table else "microdados_ed_basica"
    return f"{folder}/dados/md5_{stem}_{year}.txt"


def companion_members(folder: str, year: int) -> dict[str, str]:
    """The other members INEP packs beside the data (ingest ignores them): the data dictionary,
    the read-me and, from 2023, the technical courses' supplement."""
    members = {"dictionary": f"{folder}/Anexos/ANEXO I - Dicionário de Dados/dicionário_dados_educação_básica.xlsx",
               "readme": f"{folder}/leia-me/Leia-me Censo Escolar {year}.pdf"}
    if year >= 2023:
        members["supplement"] = f"{folder}/dados/suplemento_cursos_tecnicos_{year}.csv"
    return members


def blanks_for_missing(year: int) -> bool:
    """From 2022 on missing values are empty; before, missing numbers are written 0."""
    return year >= 2022


DATE_FORMAT = "%d%b%Y:%H:%M:%S"  # DT_ANO_LETIVO_*: 05FEB2021:00:00:00
DATE_FORMAT_TWO_DIGIT_YEAR = "%d%b%y:%H:%M:%S"  # 2023: 06MAR23:00:00:00


def date_format(year: int) -> str:
    """How INEP writes DT_ANO_LETIVO_* in a year's files; 2023 writes a two-digit year."""
    return DATE_FORMAT_TWO_DIGIT_YEAR if year == 2023 else DATE_FORMAT


def date_format_of(text: str) -> str:
    """The format of one written date, told by its length: a reader trusts the file, not
    the year (chrono's %Y would read "23" as the year 23)."""
    return DATE_FORMAT_TWO_DIGIT_YEAR if len(text.strip()) == 16 else DATE_FORMAT


ZIP_NAME_RE = re.compile(r"^microdados_censo_escolar_(\d{4})(_?)\.zip$", re.IGNORECASE)


def parse_zip_name(name: str) -> tuple[int, bool] | None:
    """(year, re-published) of a census zip's file name, None for any other file."""
    m = ZIP_NAME_RE.match(name)
    return (int(m.group(1)), bool(m.group(2))) if m else None


@cache
def columns_for_year(year: int) -> tuple[str, ...]:
    """Exact header order of microdados_ed_basica_YYYY.csv (2008-2021 share one layout)."""
    if year <= 2021:
        return _read_columns("2019-2021.txt")
    return _read_columns(f"{min(year, SINGLE_TABLE_LAST_YEAR)}.txt")


@dataclass(frozen=True)
class Stage:
    """An education stage (etapa) as the seed modelled it, named by its offer flag."""

    flag: str  # IN_MED
    label: str  # English description for reports
    label_pt: str
    feeder: str | None = None  # the stage whose pupils enter this one next year
    grades: int = 1  # years a pupil spends in the stage (its grades, where it has grades)
    # True where most of the stage's entrants never attended its feeding stage (pre-school:
    # creche reaches a minority of children), so its intake is its own past intake, never a
    # share of the feeder's leavers
    own_intake: bool = False
    # the ages (first, last, in years at the census) of the children the stage is made for;
    # demography reads their birth cohorts (None: adults, mixed ages or special classes)
    ages: tuple[int, int] | None = None

    @property
    def fed_intake(self) -> bool:
        """Whether cohort progression takes the stage's intake from its feeding stage's leavers."""
        return self.feeder is not None and not self.own_intake

    @property
    def suffix(self) -> str:
        return self.flag.removeprefix("IN_")

    @property
    def enrollment(self) -> str:
        return f"QT_MAT_{self.suffix}"

    @property
    def teachers(self) -> str:
        return f"QT_DOC_{self.suffix}"

    @property
    def classes(self) -> str:
        return f"QT_TUR_{self.suffix}"

    @property
    def columns(self) -> tuple[str, str, str, str]:
        return (self.flag, self.enrollment, self.teachers, self.classes)

    @property
    def grade_columns(self) -> tuple[str, ...]:
        """The cache's per-grade enrollment of the stage, in grade order (empty: no grades)."""
        prefixes = ("QT_MAT_FUND_AI_", "QT_MAT_FUND_AF_") if self.suffix == "FUND" else (f"{self.enrollment}_",)
        return tuple(c for p in prefixes for c in GRADE_COLUMNS if c.startswith(p) and c[len(p):].isdigit())


# grades: creche covers ages 0-3 (4 years), pre-school 4-5, early elementary grades 1-5,
# final 6-9, high school 1-3 (a 4th in integrated technical courses), technical courses about
# 3 years, adult education stages about 2, special classes taken as 4.
STAGES: tuple[Stage, ...] = (
    Stage("IN_INF_CRE", "nursery (creche)", "Creche", grades=4, ages=(0, 3)),
    Stage("IN_INF_PRE", "pre-school", "Pré-escola", feeder="IN_INF_CRE", grades=2, own_intake=True, ages=(4, 5)),
    Stage("IN_FUND", "elementary (all years)", "Ensino fundamental", feeder="IN_INF_PRE", grades=9, ages=(6, 14)),
    Stage("IN_FUND_AI", "elementary, early years (1-5)", "Fundamental anos iniciais", feeder="IN_INF_PRE", grades=5, ages=(6, 10)),
    Stage("IN_FUND_AF", "elementary, final years (6-9)", "Fundamental anos finais", feeder="IN_FUND_AI", grades=4, ages=(11, 14)),
    Stage("IN_MED", "high school", "Ensino médio", feeder="IN_FUND_AF", grades=3, ages=(15, 17)),
    Stage("IN_PROF_TEC", "technical vocational", "Educação profissional técnica", feeder="IN_FUND_AF", grades=3),
    Stage("IN_EJA_FUND", "adult education, elementary", "EJA fundamental", grades=2),
    Stage("IN_EJA_MED", "adult education, high school", "EJA médio", feeder="IN_EJA_FUND", grades=2),
    Stage("IN_ESP_CE", "special education, exclusive classes", "Educação especial, classes exclusivas", grades=4),
)
STAGE_BY_FLAG = {s.flag: s for s in STAGES}
# Stages that INEP counts as the sum of others: QT_MAT_FUND = QT_MAT_FUND_AI + QT_MAT_FUND_AF for
# every active school in every year (measured on the real files of 2008-2021).
STAGE_SUMS: dict[str, tuple[str, ...]] = {"IN_FUND": ("IN_FUND_AI", "IN_FUND_AF")}
# The five stages most pupils are in: what headline figures (the report's, the benchmarks')
# are weighted over.
MAJOR_STAGES = ("IN_INF_CRE", "IN_INF_PRE", "IN_FUND_AI", "IN_FUND_AF", "IN_MED")


def stage(flag: str) -> Stage:
    try:
        return STAGE_BY_FLAG[flag]
    except KeyError:
        known = ", ".join(STAGE_BY_FLAG)
        raise ValueError(f"unknown stage {flag!r}; known stages: {known}") from None


AGE_BANDS = (
    "QT_MAT_BAS_0_3",
    "QT_MAT_BAS_4_5",
    "QT_MAT_BAS_6_10",
    "QT_MAT_BAS_11_14",
    "QT_MAT_BAS_15_17",
    "QT_MAT_BAS_18_MAIS",
)
INFRASTRUCTURE_FLAGS = (
    "IN_AGUA_POTAVEL",
    "IN_ENERGIA_REDE_PUBLICA",
    "IN_ESGOTO_REDE_PUBLICA",
    "IN_BIBLIOTECA",
    "IN_LABORATORIO_INFORMATICA",
    "IN_QUADRA_ESPORTES",
    "IN_INTERNET",
    "IN_ALIMENTACAO",
)

# Counts are Int32: INEP's placeholder 88888 (seen in QT_PROF_*) does not fit 16 bits,
# and a value out of range must fail loudly rather than wrap.
_COUNT = pl.Int32()
_FLAG = pl.Int8()  # 0, 1 and INEP's 9 = "not informed"
_CODE = pl.Int8()  # TP_* and CO_REGIAO: small categorical codes, kept as their INEP numbers

# The stage offer flags: published up to 2024, absent from the 2025 tables. On the real
# files of 2008-2021, for active schools, IN_s = 1 exactly when QT_MAT_s > 0 (all nine stage
# flags, about 45 thousand school-years, no exception): `offer_flag` derives them by that rule.
OFFER_FLAGS: tuple[str, ...] = tuple(s.flag for s in STAGES)

# Columns the pipeline cannot do without: a year missing one is rejected (offer flags are
# derived when absent, so they are required in the cache, not in the files).
REQUIRED_COLUMNS: dict[str, pl.DataType] = {
    YEAR: pl.Int16(),
    "CO_REGIAO": _CODE,
    "CO_UF": _CODE,
    "CO_MUNICIPIO": pl.Int32(),
    SCHOOL: pl.Int32(),
    "TP_DEPENDENCIA": _CODE,
    "TP_LOCALIZACAO": _CODE,
    "TP_SITUACAO_FUNCIONAMENTO": _CODE,
    **{c: (_FLAG if c.startswith("IN_") else _COUNT) for s in STAGES for c in s.columns},
}
REQUIRED_IN_FILES = tuple(c for c in REQUIRED_COLUMNS if c not in OFFER_FLAGS)


def offer_flag(stage: Stage) -> pl.Expr:
    """The offer rule: 1 when an active school has students in the stage, 0 when it has none,
    null for a school that is not active (unknown, as INEP leaves it blank)."""
    active = pl.col("TP_SITUACAO_FUNCIONAMENTO") == SITUATION_ACTIVE
    return pl.when(active).then((pl.col(stage.enrollment).fill_null(0) > 0).cast(pl.Int8)).otherwise(None).alias(stage.flag)


# Enrollment per grade, from 2023: elementary grades keep INEP's names; high-school grade g is
# one column in every year that has it, null before. Its sources, first match wins:
# QT_MAT_MED_g (2025's re-publication); the sum of its tracks' grade g, proprietary,
# integrated technical and professional qualification, normal (2025's first release:
# PROP, IFTP_CT, IFTP_QP, NM); or proprietary, integrated technical, normal (2023-2024:
# PROP, CT, NM). _NS is high school not organised in grades.
_MED_TRACKS = (("PROP", "IFTP_CT", "IFTP_QP", "NM"), ("PROP", "CT", "NM"))
GRADE_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    **{f"QT_MAT_FUND_AI_{g}": ((f"QT_MAT_FUND_AI_{g}",),) for g in range(1, 6)},
    **{f"QT_MAT_FUND_AF_{g}": ((f"QT_MAT_FUND_AF_{g}",),) for g in range(6, 10)},
    **{f"QT_MAT_MED_{g}": ((f"QT_MAT_MED_{g}",), *(tuple(f"QT_MAT_MED_{t}_{g}" for t in tracks) for tracks in _MED_TRACKS))
       for g in range(1, 5)},
    "QT_MAT_MED_NS": (("QT_MAT_MED_NS",), *(tuple(f"QT_MAT_MED_{t}_NS" for t in tracks if t != "NM") for tracks in _MED_TRACKS)),
}
GRADE_SOURCES: tuple[str, ...] = tuple(dict.fromkeys(c for alts in GRADE_COLUMNS.values() for alt in alts for c in alt))


def grade_sources(header) -> dict[str, tuple[str, ...]]:
    """Per harmonised grade column, the header's columns that add up to it (the first
    alternative the header has in full); grades the header lacks are left out."""
    present = set(header)
    return {name: next(alt for alt in alts if set(alt) <= present)
            for name, alts in GRADE_COLUMNS.items() if any(set(alt) <= present for alt in alts)}
# Columns used when present; a year without one gets nulls, never a crash.
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "SG_UF": pl.Categorical(),
    "NO_MUNICIPIO": pl.Categorical(),
    "NO_ENTIDADE": pl.String(),
    "DT_ANO_LETIVO_INICIO": pl.Date(),
    "QT_MAT_BAS": _COUNT,
    "QT_DOC_BAS": _COUNT,
    "QT_TUR_BAS": _COUNT,
    "QT_SALAS_UTILIZADAS": _COUNT,
    **{c: _COUNT for c in AGE_BANDS},
    **{c: _FLAG for c in INFRASTRUCTURE_FLAGS},
    **{c: _COUNT for c in GRADE_COLUMNS},
}
CACHE_SCHEMA: dict[str, pl.DataType] = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
# Columns whose values describe a year's activity: null for a school that is not active.
ACTIVITY_COLUMNS = tuple(c for c in CACHE_SCHEMA if c.startswith(("QT_MAT_", "QT_DOC_", "QT_TUR_")) or c in OFFER_FLAGS)
# Bump when CACHE_SCHEMA or parsing rules change, so cached years are re-ingested.
CACHE_SCHEMA_VERSION = 2

SITUATION_ACTIVE = 1

# IBGE state codes, abbreviations, names and regions (CO_REGIAO 1 Norte ... 5 Centro-Oeste).
UFS: tuple[tuple[int, str, str, int], ...] = (
    (11, "RO", "Rondônia", 1), (12, "AC", "Acre", 1), (13, "AM", "Amazonas", 1),
    (14, "RR", "Roraima", 1), (15, "PA", "Pará", 1), (16, "AP", "Amapá", 1),
    (17, "TO", "Tocantins", 1), (21, "MA", "Maranhão", 2), (22, "PI", "Piauí", 2),
    (23, "CE", "Ceará", 2), (24, "RN", "Rio Grande do Norte", 2), (25, "PB", "Paraíba", 2),
    (26, "PE", "Pernambuco", 2), (27, "AL", "Alagoas", 2), (28, "SE", "Sergipe", 2),
    (29, "BA", "Bahia", 2), (31, "MG", "Minas Gerais", 3), (32, "ES", "Espírito Santo", 3),
    (33, "RJ", "Rio de Janeiro", 3), (35, "SP", "São Paulo", 3), (41, "PR", "Paraná", 4),
    (42, "SC", "Santa Catarina", 4), (43, "RS", "Rio Grande do Sul", 4),
    (50, "MS", "Mato Grosso do Sul", 5), (51, "MT", "Mato Grosso", 5), (52, "GO", "Goiás", 5),
    (53, "DF", "Distrito Federal", 5),
)
UF_ABBREVIATIONS: dict[int, str] = {code: abbreviation for code, abbreviation, _, _ in UFS}
REGIONS = {1: "Norte", 2: "Nordeste", 3: "Sudeste", 4: "Sul", 5: "Centro-Oeste"}


def parse_years(spec: str | None, available: list[int] | None = None) -> list[int]:
    """'2011-2021', '2015,2017', 'all' or None -> sorted years."""
    if spec is None or spec.strip().lower() == "all":
        if available is not None:
            return sorted(available)
        return list(range(DEFAULT_FIRST_YEAR, LATEST_KNOWN_YEAR + 1))
    years: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"\d{4}(\s*-\s*\d{4})?", part):
            raise ValueError(f"cannot read the years {spec!r} ({part!r} is not a year or a range): "
                             "use '2011-2021', '2015,2017' or 'all'")
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if lo > hi:
                raise ValueError(f"year range {part!r} runs backwards")
            years.update(range(lo, hi + 1))
        else:
            years.add(int(part))
    if not years:
        raise ValueError(f"no years in {spec!r}")
    bad = [y for y in years if y < FIRST_YEAR or y > 2100]
    if bad:
        raise ValueError(f"years out of range in {spec!r}: {bad}")
    return sorted(years)


def parse_stages(spec: str | None) -> list[str]:
    if spec is None or spec.strip().lower() == "all":
        return [s.flag for s in STAGES]
    flags = [f.strip().upper() for f in spec.split(",") if f.strip()]
    if not flags:
        raise ValueError(f"no stage in {spec!r}: name one or more offer flags (IN_MED,IN_FUND_AI) or 'all'")
    for f in flags:
        stage(f)
    return flags
