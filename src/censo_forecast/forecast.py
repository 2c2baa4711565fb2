"""Forecasts for each forecast year: per school with intervals (`school_forecasts`, from the
origin rows of the last census year), and summed to municipality, state and country with
intervals calibrated on the walk-forward errors of totals at each level (never by adding
bounds), plus the enrollment expected in offerings that will open (new schools or stages);
and the files that hold them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from censo_forecast import atomic, coherence, intervals, models, reconcile, statepaths
from censo_forecast import horizons as horizons_mod
from censo_forecast.features import ANCHOR, HORIZON_FEATURE, TARGET_YEAR
from censo_forecast.inep import catalog
from censo_forecast.outputs import (
    BIRTHS_ADJUSTMENT,
    COUNTRY,
    COUNTRY_KEY,
    ENROLLMENT,
    FORECAST,
    HORIZON,
    INTERVAL_LEVELS,
    LAST_ENROLLMENT,
    MODEL,
    MUNICIPALITIES,
    NEW_OFFERINGS_FORECAST,
    SCHOOL_FORECAST_COLUMNS,
    SCHOOLS_FORECAST,
    STAGE,
    STATES,
    SUM_OF_PARTS,
    bound,
    forecast_file,
)
from censo_forecast.panel import SCHOOL, YEAR, offers
from censo_forecast.validation import by_horizon

log = logging.getLogger(__name__)
NEW_OFFERINGS_WINDOW = statepaths.NEW_OFFERINGS_WINDOW
DRAWS = 400


def school_forecasts(rows: pl.DataFrame, flag: str, model: models.ByHorizon, chosen: dict[int, str],
                     calibration: pl.DataFrame | None) -> pl.DataFrame:
    """A stage's forecast per school and horizon from the origin rows of the last census year
    (`features.forecast_rows`), with 80 % and 95 % intervals where `calibration` holds that
    horizon's residuals: CO_ENTIDADE, CO_MUNICIPIO, CO_UF, etapa, horizonte, NU_ANO_CENSO
    (the forecast year), matriculas_ultimo_ano, modelo, previsao and the bounds."""
    stacked = horizons_mod.stack(rows, list(model.by_years_ahead), truth=False)
    frame = stacked.select(SCHOOL, "CO_MUNICIPIO", "CO_UF", pl.lit(flag).alias(STAGE),
                           pl.col(HORIZON_FEATURE).cast(pl.Int32).alias(HORIZON),
                           pl.col(TARGET_YEAR).alias(YEAR),
                           pl.col(ANCHOR).cast(pl.Float64).alias(LAST_ENROLLMENT))
    frame = frame.with_columns(
        pl.col(HORIZON).replace_strict(chosen, return_dtype=pl.String).alias(MODEL),
        pl.Series(FORECAST, np.asarray(model.predict(horizons_mod.matrix(stacked)), dtype=np.float64)))
    return _bounded(frame, calibration)


def sum_of_parts(schools: pl.DataFrame, flag: str, parts: tuple[str, ...], calibration: pl.DataFrame | None) -> pl.DataFrame:
    """A stage published as the sum of its parts (`coherence.SumOfParts`), per school and
    horizon, from their rows in `schools` (`school_forecasts`' columns), with its own intervals."""
    summed = (schools.filter(pl.col(STAGE).is_in(list(parts)))
              .group_by(SCHOOL, HORIZON, YEAR, maintain_order=True)
              .agg(pl.col("CO_MUNICIPIO", "CO_UF").first(), pl.col(LAST_ENROLLMENT, FORECAST).sum()))
    frame = summed.select(SCHOOL, "CO_MUNICIPIO", "CO_UF", pl.lit(flag).alias(STAGE), HORIZON, YEAR, LAST_ENROLLMENT,
                          pl.lit(SUM_OF_PARTS).alias(MODEL), FORECAST).sort(HORIZON, SCHOOL)
    return _bounded(frame, calibration)


def _bounded(frame: pl.DataFrame, calibration: pl.DataFrame | None) -> pl.DataFrame:
    """School forecasts with their intervals, horizon by horizon (none without `calibration`)."""
    if calibration is None:
        return frame
    return pl.concat([_with_bounds(part, calibration.filter(pl.col(HORIZON) == h)) for h, part in by_horizon(frame)],
                     how="diagonal")


def _with_bounds(frame: pl.DataFrame, calibration: pl.DataFrame) -> pl.DataFrame:
    """One horizon's school forecasts with their intervals (none when it has no residuals)."""
    if calibration.height == 0:
        return frame
    pred, last_year = frame[FORECAST].to_numpy(), frame[LAST_ENROLLMENT].to_numpy()
    return frame.with_columns(pl.Series(k, v) for k, v in intervals.bounds(pred, last_year, calibration).items())


def published(schools: pl.DataFrame, panel: pl.DataFrame, calibration: dict[str, pl.DataFrame] | None = None) -> pl.DataFrame:
    """The stages' school forecasts as they are published: each state's total blended with its
    own drift where the walk-forward chose it (`reconcile`, with the stages' `calibration`
    tables), each state's path within its record (`statepaths`), stages that add up made of
    their parts (`coherence`), with NO_ENTIDADE as the last census year spells it."""
    last = panel.select(pl.col(YEAR).max()).item()
    names = panel.filter(pl.col(YEAR) == last).select(SCHOOL, "NO_ENTIDADE")
    if schools.height:
        schools = reconcile.reconcile(schools, panel, calibration or {})
        schools = statepaths.limit(schools, panel, statepaths.new_per_state(panel, schools[STAGE].unique().to_list()))
    return coherence.schools(schools).join(names, on=SCHOOL, how="left")


def new_offerings(panel: pl.DataFrame, flag: str, window: int = NEW_OFFERINGS_WINDOW) -> pl.DataFrame:
    """Per municipality and year: enrollment in schools that offer the stage this year but
    did not the year before (new schools included). The last `window` years."""
    stage = catalog.stage(flag)
    offering = panel.filter(offers(stage.flag)).select(SCHOOL, YEAR, "CO_MUNICIPIO", "CO_UF", stage.enrollment)
    before = offering.select(SCHOOL, (pl.col(YEAR) + 1).alias(YEAR), pl.lit(True).alias("offered_before"))
    first, last = panel.select(pl.col(YEAR).min().alias("first"), pl.col(YEAR).max().alias("last")).row(0)
    years = [y for y in range(last - window + 1, last + 1) if y > first]
    fresh = (
        offering.filter(pl.col(YEAR).is_in(years))
        .join(before, on=[SCHOOL, YEAR], how="left")
        .filter(pl.col("offered_before").is_null())
        .group_by("CO_MUNICIPIO", "CO_UF", YEAR)
        .agg(pl.col(stage.enrollment).fill_null(0).sum().cast(pl.Float64).alias("new_enrollment"))
    )
    munis = panel.filter(pl.col(YEAR) == last).select("CO_MUNICIPIO", "CO_UF").unique()
    grid = munis.join(pl.DataFrame({YEAR: years}, schema={YEAR: panel.schema[YEAR]}), how="cross")
    return grid.join(fresh, on=["CO_MUNICIPIO", "CO_UF", YEAR], how="left").with_columns(pl.col("new_enrollment").fill_null(0.0))


def _area_table(keys: np.ndarray, last: np.ndarray, schools: np.ndarray, births: np.ndarray, errors: np.ndarray | None,
                new_expected: np.ndarray, key_name: str) -> pl.DataFrame:
    """An area's forecast: its schools' plus the new offerings expected plus the births
    adjustment. Its bounds are quantiles of simulated totals, the forecast times (1 + a
    walk-forward error of totals of its level and size), widened to hold the forecast itself
    (none when the horizon has no walk-forward totals: `errors` None)."""
    point = schools + new_expected + births
    out = {key_name: keys, LAST_ENROLLMENT: last, SCHOOLS_FORECAST: schools, NEW_OFFERINGS_FORECAST: new_expected,
           BIRTHS_ADJUSTMENT: births, FORECAST: point}
    totals = None if errors is None else np.maximum(point * (1.0 + errors), 0.0)
    for level in INTERVAL_LEVELS:
        a = (1 - level / 100) / 2
        nothing = np.full(len(keys), np.nan)
        out[bound("inferior", level)] = nothing if totals is None else np.minimum(np.quantile(totals, a, axis=0), point)
        out[bound("superior", level)] = nothing if totals is None else np.maximum(np.quantile(totals, 1 - a, axis=0), point)
    return pl.DataFrame(out).fill_nan(None)


def _sum_by(group: np.ndarray, groups: int, values: np.ndarray) -> np.ndarray:
    """Sum the last axis of values (n, or draws x n) into groups."""
    matrix = np.atleast_2d(values)
    summed = np.stack([np.bincount(group, weights=row, minlength=groups) for row in matrix])
    return summed if values.ndim == 2 else summed[0]


def _births_adjustment(births: tuple[float, pl.DataFrame] | None, munis: list, schools: np.ndarray,
                       new_expected: np.ndarray) -> np.ndarray:
    """Per municipality (in `munis`' order): w x (its births-scaled total - its bottom-up total),
    kept from taking the total below 0; 0 without births or where its total is unknown."""
    if births is None:
        return np.zeros(len(munis))
    weight, table = births
    known_totals = dict(table.drop_nulls().iter_rows())
    scaled = np.array([known_totals.get(m, np.nan) for m in munis], dtype=np.float64)
    bottom_up = schools + new_expected
    return np.where(np.isnan(scaled), 0.0, np.maximum(weight * (scaled - bottom_up), -bottom_up))


def area_totals(schools: pl.DataFrame, walk_forward: pl.DataFrame, offerings: pl.DataFrame, flag: str, *,
                years_ahead: int = 1, births: tuple[float, pl.DataFrame] | None = None, draws: int = DRAWS,
                seed: int = 0) -> dict[str, pl.DataFrame]:
    """Municipal, state and national totals for one stage and horizon with intervals.

    `previsao_escolas` is exactly the sum of the school forecasts and `previsao` adds the new
    offerings expected and, given `births` (the stage's weight w and each municipality's
    births-scaled total: `municipal`), `ajuste_nascimentos`: w x (births-scaled - bottom-up)
    in each municipality with a births-scaled total (0 elsewhere), so a municipality's
    `previsao` is their blend, never below 0. No other adjustment moves the sum: on the real
    census of Alagoas, adding the expected net effect of closures made the state totals worse
    at almost every stage and horizon (benchmarks/README.md, "backtest.py"). The range comes
    from the walk-forward errors of totals as published at each level (`intervals.area_errors`
    of `walk_forward`, this horizon's `municipal.walk_forward_totals`; a municipality's from
    its recent test years with their common bias shrunk, `intervals.municipal_errors`, a
    state's and the country's with either sign, `intervals.symmetric`; empty: a horizon never
    validated, totals without bounds). New offerings: h times the mean of the recent years'
    openings (enrollment in schools that began offering the stage that year), counted as still
    open at the forecast year (their later growth or closure is not modelled).
    """
    rng = np.random.default_rng(seed)
    pred = schools[FORECAST].to_numpy()
    last = schools[LAST_ENROLLMENT].to_numpy()
    bounded = walk_forward.height > 0
    off_years = sorted(offerings[YEAR].unique().to_list()) or [None]
    munis = sorted(set(schools["CO_MUNICIPIO"].to_list()) | set(offerings["CO_MUNICIPIO"].to_list()))
    muni_index = {m: i for i, m in enumerate(munis)}
    muni_uf = dict(zip(offerings["CO_MUNICIPIO"].to_list(), offerings["CO_UF"].to_list(), strict=True))
    muni_uf.update(zip(schools["CO_MUNICIPIO"].to_list(), schools["CO_UF"].to_list(), strict=True))
    per_year = np.zeros((len(off_years), len(munis)))
    for j, year in enumerate(off_years):
        part = offerings.filter(pl.col(YEAR) == year)
        for m, v in zip(part["CO_MUNICIPIO"].to_list(), part["new_enrollment"].to_list(), strict=True):
            per_year[j, muni_index[m]] = v
    school_muni = np.array([muni_index[m] for m in schools["CO_MUNICIPIO"].to_list()], dtype=np.int64)
    ufs = sorted(set(muni_uf[m] for m in munis))
    uf_of = np.array([ufs.index(muni_uf[m]) for m in munis])
    to_munis = partial(_sum_by, school_muni, len(munis))  # schools -> municipalities
    to_ufs = partial(_sum_by, uf_of, len(ufs))  # municipalities -> states

    def to_country(values: np.ndarray) -> np.ndarray:
        return values.sum(axis=-1, keepdims=True)

    # level -> (its areas, their key column, municipalities -> areas, the key its walk-forward totals are summed by (None: the country))
    levels: dict[str, tuple[np.ndarray, str, Callable[[np.ndarray], np.ndarray], str | None]] = {
        MUNICIPALITIES: (np.array(munis), "CO_MUNICIPIO", lambda v: v, "CO_MUNICIPIO"),
        STATES: (np.array(ufs), "CO_UF", to_ufs, "CO_UF"),
        COUNTRY: (np.array(["BR"]), COUNTRY_KEY, lambda v: to_country(to_ufs(v)), None),
    }
    new_expected = years_ahead * per_year.mean(axis=0)
    adjustment = _births_adjustment(births, munis, to_munis(pred), new_expected)
    out = {}
    for name, (keys, key_name, up, error_key) in levels.items():
        last_a, pred_a, births_a, new_a = up(to_munis(last)), up(to_munis(pred)), up(adjustment), up(new_expected)
        errors = None
        if bounded:
            by_level = intervals.municipal_errors if name == MUNICIPALITIES else intervals.symmetric
            errors = intervals.sample_area_errors(by_level(intervals.area_errors(walk_forward, error_key)),
                                                  pred_a + new_a + births_a, draws, rng)
        out[name] = _area_table(keys, last_a, pred_a, births_a, errors, new_a, key_name)
    out[MUNICIPALITIES] = out[MUNICIPALITIES].with_columns(pl.col("CO_MUNICIPIO").replace_strict(muni_uf).alias("CO_UF"))
    out[STATES] = out[STATES].with_columns(_uf_abbreviation(pl.col("CO_UF")))
    return {k: v.with_columns(pl.lit(flag).alias(STAGE), pl.lit(years_ahead, dtype=pl.Int32).alias(HORIZON))
            for k, v in out.items()}


def write_forecasts(out: Path, year: int, schools: pl.DataFrame, areas: dict[str, pl.DataFrame]) -> list[Path]:
    """previsoes_{year}.parquet/.csv and the _municipios, _ufs, _brasil CSVs, atomically
    (the school rows and area totals of one forecast year)."""
    written = []
    schools = schools.select(SCHOOL_FORECAST_COLUMNS).sort(STAGE, SCHOOL)
    for suffix, write in ((".parquet", atomic.write_parquet), (".csv", atomic.write_csv)):
        path = Path(out) / forecast_file(year, suffix=suffix)
        write(path, schools)
        written.append(path)
    for name, frame in areas.items():
        path = Path(out) / forecast_file(year, name)
        first = [c for c in (STAGE, HORIZON, "CO_UF", "SG_UF", "CO_MUNICIPIO", "NO_MUNICIPIO", COUNTRY_KEY) if c in frame.columns]
        atomic.write_csv(path, frame.select(*first, *[c for c in frame.columns if c not in first]))
        written.append(path)
    return written


def municipality_names(panel: pl.DataFrame) -> pl.DataFrame:
    """CO_MUNICIPIO -> NO_MUNICIPIO (its latest spelling in the census) and SG_UF: the names a
    planner searches the report and the municipal files by."""
    names = (panel.select("CO_MUNICIPIO", "CO_UF", YEAR, pl.col("NO_MUNICIPIO").cast(pl.String) if "NO_MUNICIPIO" in panel.columns
                          else pl.lit(None, dtype=pl.String).alias("NO_MUNICIPIO"))
             .sort(YEAR).group_by("CO_MUNICIPIO").agg(pl.col("CO_UF").last(), pl.col("NO_MUNICIPIO").drop_nulls().last()))
    return names.select("CO_MUNICIPIO", "NO_MUNICIPIO",
                        _uf_abbreviation(pl.col("CO_UF")))


def history(panel: pl.DataFrame, flags: list[str]) -> pl.DataFrame:
    """Census enrollment per stage, state and year, and the country's (CO_UF 0, SG_UF "BR"):
    the actual path the report draws before the forecast years (historico_matriculas.csv)."""
    frames = []
    for flag in flags:
        stage = catalog.stage(flag)
        offering = panel.filter(offers(stage.flag))
        states = offering.group_by("CO_UF", YEAR).agg(pl.col(stage.enrollment).fill_null(0).sum().cast(pl.Float64).alias(ENROLLMENT))
        country = states.group_by(YEAR).agg(pl.col(ENROLLMENT).sum()).with_columns(pl.lit(0, dtype=states.schema["CO_UF"]).alias("CO_UF"))
        frames.append(pl.concat([states, country.select(states.columns)]).with_columns(pl.lit(flag).alias(STAGE)))
    table = pl.concat(frames).with_columns(_uf_abbreviation(pl.col("CO_UF"), country="BR"))
    return table.sort(STAGE, "CO_UF", YEAR).select(STAGE, "CO_UF", "SG_UF", YEAR, ENROLLMENT)


def _uf_abbreviation(code: pl.Expr, country: str | None = None) -> pl.Expr:
    """SG_UF of an IBGE state code (CO_UF 0, the country's rows, as `country`)."""
    lookup = {**catalog.UF_ABBREVIATIONS, **({0: country} if country else {})}
    return code.replace_strict(lookup, default=None, return_dtype=pl.String).alias("SG_UF")
