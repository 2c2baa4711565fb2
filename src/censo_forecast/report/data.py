"""What the report shows, read from a run's output files: it rereads what `run` wrote and
computes nothing the files do not already hold (only sums, differences and sorting).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from censo_forecast import outputs, storage
from censo_forecast.inep.catalog import MAJOR_STAGES, SCHOOL, YEAR
from censo_forecast.outputs import (
    BOUNDS,
    CHOSEN,
    COVERAGE_80_MEAN,
    COVERAGE_95_MEAN,
    ENROLLMENT,
    FORECAST,
    HORIZON,
    LAST_ENROLLMENT,
    LOWER_80,
    MAE_MEAN,
    MODEL,
    SAMPLES,
    SKILL_OF_CHOICE,
    SKILL_VS_COHORT,
    SKILL_VS_PERSISTENCE,
    STAGE,
    UPPER_80,
)
from censo_forecast.report.i18n import round_half_up

MOVERS = 10  # municipalities and schools listed per stage, growing and shrinking


class DamagedOutput(Exception):
    """An output the report would read is not the file the run wrote; the message names it."""


def run_record(out: Path) -> dict:
    path = out / outputs.METADATA
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedOutput(f"{path} is damaged ({exc}); rerun `censo-forecast run --out {out}`") from None
    if not isinstance(meta, dict):
        raise DamagedOutput(f"{path} is damaged (not a JSON object); rerun `censo-forecast run --out {out}`")
    return meta


def verify(out: Path, meta: dict) -> None:
    """Refuse outputs that are not the files the run wrote (their sha256 in the run record)."""
    recorded = meta.get("outputs_sha256")
    files = recorded if isinstance(recorded, dict) else {}
    missing = sorted(str(name) for name in files if not (out / str(name)).exists())
    if missing:
        raise DamagedOutput(f"{out} lacks {len(missing)} file(s) the run wrote: {', '.join(missing)}; recreate them with "
                            f"`censo-forecast run --out {out}` (its checkpoints make that quick)")
    for name, expected in files.items():
        path = out / str(name)
        if storage.sha256(path) != expected:
            raise DamagedOutput(f"{path} is not the file the run wrote (its sha256 differs): the report would show "
                                f"other numbers; rerun `censo-forecast run --out {out}`")


def forecast_years(out: Path, meta: dict) -> list[int]:
    years = meta.get("forecast_years") or ([meta["forecast_year"]] if meta.get("forecast_year") else [])
    return [y for y in years if (out / outputs.forecast_file(y, "brasil")).exists()]


def areas(out: Path, years: list[int], level: str) -> pl.DataFrame:
    """The forecast files of one area level for every forecast year, with the year as a column."""
    numbers = dict.fromkeys(BOUNDS, pl.Float64)
    return pl.concat([pl.read_csv(out / outputs.forecast_file(y, level), schema_overrides=numbers)
                      .with_columns(pl.lit(y).alias(YEAR)) for y in years], how="diagonal")


def schools(out: Path, year: int) -> pl.DataFrame:
    """One forecast year's school rows (the Parquet twin of previsoes_{year}.csv: same rows, faster)."""
    return pl.read_parquet(out / outputs.forecast_file(year, suffix=".parquet"))


def headline(country: pl.DataFrame, history: pl.DataFrame | None) -> list[dict]:
    """Per stage: the last census total, the forecast with its 80 % range per year, and the
    census path before it (for the sparkline)."""
    rows = []
    for flag in country[STAGE].unique(maintain_order=True):
        ahead = country.filter(pl.col(STAGE) == flag).sort(YEAR)
        past = (history.filter((pl.col(STAGE) == flag) & (pl.col("SG_UF") == "BR")).sort(YEAR)
                if history is not None else pl.DataFrame({YEAR: [], ENROLLMENT: []}))
        rows.append({"flag": flag, "last": ahead[LAST_ENROLLMENT][0], "years": ahead[YEAR].to_list(),
                     "forecast": ahead[FORECAST].to_list(), "low": ahead[LOWER_80].to_list(),
                     "high": ahead[UPPER_80].to_list(),
                     "past_years": past[YEAR].to_list(), "past": past[ENROLLMENT].to_list()})
    return rows


def with_change(frame: pl.DataFrame) -> pl.DataFrame:
    """The change from the last census to the forecast, in students and as a fraction."""
    return frame.with_columns((pl.col(FORECAST) - pl.col(LAST_ENROLLMENT)).alias("change"),
                              pl.when(pl.col(LAST_ENROLLMENT) > 0).then(pl.col(FORECAST) / pl.col(LAST_ENROLLMENT) - 1)
                              .alias("change_pct"))


def movers(frame: pl.DataFrame, n: int = MOVERS) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """Per stage, the n places with the largest expected growth and the n with the largest
    decline, in students (a planner builds seats for students, not for percentages)."""
    frame = with_change(frame)
    out = {}
    for flag in frame[STAGE].unique(maintain_order=True):
        rows = frame.filter(pl.col(STAGE) == flag)
        out[flag] = (rows.filter(pl.col("change") > 0).sort("change", descending=True).head(n),
                     rows.filter(pl.col("change") < 0).sort("change").head(n))
    return out


def state_map(states: pl.DataFrame, words) -> dict:
    """{stage: {year: {UF: [forecast text, change text, change fraction]}}}: the tile map's
    values, written here so the page shows the file's numbers exactly as the tables do."""
    table: dict = {}
    for row in with_change(states).iter_rows(named=True):
        table.setdefault(row[STAGE], {}).setdefault(str(row[YEAR]), {})[row["SG_UF"]] = [
            words.integer(row[FORECAST]), words.percent(row["change_pct"]), row["change_pct"]]
    return table


def _whole(value) -> int | None:
    return None if value is None else round_half_up(value)


def _tenths(last, forecast) -> int | None:
    return round_half_up(1000 * (forecast / last - 1)) if last and forecast is not None else None


def table_records(frame: pl.DataFrame, key: str, years: list[int], stages: list[str]) -> list[list]:
    """Rows [place, stage index, last census, then per year forecast, low 80, high 80, and the
    change to the last year in tenths of a per cent], whole numbers rounded half up: what the
    page's script shows, sorts and downloads. A place and stage whose numbers all round to 0
    (a municipality without the stage) has no row."""
    wide = frame.select(key, STAGE, LAST_ENROLLMENT, YEAR, FORECAST, LOWER_80, UPPER_80)
    index = {flag: i for i, flag in enumerate(stages)}
    rows: dict[tuple, list] = {}
    change: dict[tuple, int | None] = {}
    for r in wide.sort(key, STAGE, YEAR).iter_rows(named=True):
        row = rows.setdefault((r[key], r[STAGE]), [r[key], index[r[STAGE]], _whole(r[LAST_ENROLLMENT])] + [None] * (3 * len(years)))
        at = 3 + 3 * years.index(r[YEAR])
        row[at:at + 3] = [_whole(r[FORECAST]), _whole(r[LOWER_80]), _whole(r[UPPER_80])]
        if r[YEAR] == years[-1]:  # the change from the file's values, as the headline and the map give it
            change[(r[key], r[STAGE])] = _tenths(r[LAST_ENROLLMENT], r[FORECAST])
    # no students in the census and none expected (a municipality without the stage): no line
    return [row + [change.get(k)] for k, row in rows.items() if any(row[2:])]


def municipality_table(munis: pl.DataFrame, years: list[int], stages: list[str]) -> dict:
    """Every municipality's forecast by stage and year, compact, for the page's search table."""
    names = "NO_MUNICIPIO" if "NO_MUNICIPIO" in munis.columns else None
    places = munis.select("CO_MUNICIPIO", pl.col(names) if names else pl.col("CO_MUNICIPIO").cast(pl.String).alias("NO_MUNICIPIO"),
                          "SG_UF" if "SG_UF" in munis.columns else pl.lit("").alias("SG_UF")).unique("CO_MUNICIPIO").sort("CO_MUNICIPIO")
    position = {code: i for i, code in enumerate(places["CO_MUNICIPIO"].to_list())}
    rows = table_records(munis, "CO_MUNICIPIO", years, stages)
    for row in rows:
        row[0] = position[row[0]]
    return {"places": [[c, n or "", u or ""] for c, n, u in places.iter_rows()], "rows": rows}


def school_table(out: Path, years: list[int], stages: list[str], munis: dict, limit: int) -> tuple[dict | None, int]:
    """Every school's forecast by stage and year when the run has at most `limit` schools;
    (None, number of schools) above it."""
    count = pl.scan_parquet(out / outputs.forecast_file(years[0], suffix=".parquet")).select(
        pl.col(SCHOOL).n_unique()).collect().item()  # every forecast year has the same schools
    if count > limit:
        return None, count
    frame = pl.concat([schools(out, y).with_columns(pl.lit(y).alias(YEAR)) for y in years], how="diagonal")
    muni_index = {place[0]: i for i, place in enumerate(munis["places"])}
    places = frame.select(SCHOOL, "NO_ENTIDADE", "CO_MUNICIPIO").unique(SCHOOL).sort(SCHOOL)
    position = {code: i for i, code in enumerate(places[SCHOOL].to_list())}
    rows = table_records(frame, SCHOOL, years, stages)
    for row in rows:
        row[0] = position[row[0]]
    return {"places": [[c, n or "", muni_index.get(m, -1)] for c, n, m in places.iter_rows()], "rows": rows}, count


# What the product publishes, scored against census years it never saw (benchmarks/backtest.py
# on a real census; benchmarks/README.md has the tables): the report quotes it beside the
# walk-forward, which leaves out the refit, the new offerings and the sums. Update it with
# the benchmark. Skill = 1 - MAE / persistence's MAE per school, per stage; state error = the
# state total's absolute error against the census, as a fraction, mean over origins.
@dataclass(frozen=True)
class PublishedBacktest:
    census: str
    origins: tuple[int, int]  # first and last origin year
    with_births: bool  # run with births and population (--demography) or without
    skill_one_year: dict[str, float]  # stage -> skill per school against persistence
    skill_five_years: dict[str, float]
    state_error_one_year: dict[str, float]  # stage -> absolute error of the state total
    state_error_five_years: dict[str, float]


def _measured(with_births: bool, rows: dict[str, tuple[float, float, float, float]]) -> PublishedBacktest:
    """rows: stage -> (skill one year ahead, five years ahead, state error one year ahead, five)."""
    columns = [{flag: row[i] for flag, row in rows.items()} for i in range(4)]
    return PublishedBacktest("Alagoas", (2013, 2020), with_births, *columns)


# with births: the run of 2026-12-07, second session (`bt_dd`); without: that day's run
# without births of the same code (`bt_nodemo4`)
PUBLISHED_BACKTESTS = (
    _measured(True, {"IN_INF_CRE": (0.024, 0.048, 0.058, 0.118), "IN_INF_PRE": (0.054, 0.098, 0.018, 0.025),
                     "IN_FUND_AI": (0.056, 0.138, 0.012, 0.055), "IN_FUND_AF": (0.064, 0.111, 0.019, 0.025),
                     "IN_MED": (0.061, 0.083, 0.022, 0.064)}),
    _measured(False, {"IN_INF_CRE": (0.024, 0.054, 0.036, 0.103), "IN_INF_PRE": (0.056, 0.093, 0.029, 0.111),
                      "IN_FUND_AI": (0.056, 0.136, 0.013, 0.081), "IN_FUND_AF": (0.063, 0.111, 0.018, 0.030),
                      "IN_MED": (0.061, 0.080, 0.023, 0.064)}),
)


def published_backtest(with_births: bool) -> PublishedBacktest:
    """The back-test of a run like this one: with births where it had them, without otherwise."""
    return next(check for check in PUBLISHED_BACKTESTS if check.with_births == with_births)


def quality(results: pl.DataFrame) -> pl.DataFrame:
    """Per stage, at one year ahead and at the last horizon: the chosen model's MAE, its skill
    against Persistencia and Coorte, the skill of the choice as published (where the run has
    it) and its interval coverage (resultados_finais.csv)."""
    if HORIZON not in results.columns:
        results = results.with_columns(pl.lit(1).alias(HORIZON))
    chosen = results.filter(pl.col(CHOSEN))
    last_h = int(results.select(pl.col(HORIZON).max()).item())
    keep = {MODEL, MAE_MEAN, SKILL_VS_PERSISTENCE, SKILL_VS_COHORT, SKILL_OF_CHOICE, COVERAGE_80_MEAN, COVERAGE_95_MEAN, SAMPLES}
    frames = []
    for h in sorted({1, last_h}):
        part = chosen.filter(pl.col(HORIZON) == h).select(STAGE, *[c for c in chosen.columns if c in keep])
        frames.append(part.rename({c: at(c, h) for c in part.columns if c != STAGE}))
    table = frames[0]
    for frame in frames[1:]:
        table = table.join(frame, on=STAGE, how="left")
    return table


def at(column: str, h: int) -> str:
    """The `quality` table's column of a resultados_finais column at h years ahead."""
    return f"{column}_{h}"


def weighted(table: pl.DataFrame, column: str, h: int, stages=MAJOR_STAGES) -> float | None:
    """Mean of a quality column at h years ahead over the major stages present, weighted by their tested rows."""
    column = at(column, h)
    rows = table.filter(pl.col(STAGE).is_in(list(stages)) & pl.col(column).is_not_null())
    if rows.height == 0:
        rows = table.filter(pl.col(column).is_not_null())
    if rows.height == 0:
        return None
    weights = rows[at(SAMPLES, h)].cast(pl.Float64)
    return float((rows[column] * weights).sum() / weights.sum())
