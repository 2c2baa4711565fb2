"""Municipal totals of the school-age stages blended with their births, where the walk-forward
says it helps (only with demography: `demography.known`), and every stage's walk-forward
municipal totals as published, which the intervals of totals are calibrated on.

A municipality's bottom-up total is its schools' forecasts plus the new offerings expected.
Its births offer a second forecast of the same total: the census total at the origin times
the ratio of the birth cohorts of the stage's ages in the target year to those at the origin
(`known.birth_ratio`, births known at the origin only). For each stage the walk-forward picks
the births' weight w in WEIGHTS with the lowest weighted absolute % error of municipal
totals (the calibration table's sums of the chosen model, with the new offerings the origin
expected, against the census totals); a tie keeps the smaller weight. Two years ahead and
beyond take the stage's weight, chosen on the errors averaged over every validated horizon
(a later horizon has too few test years to choose alone). One year ahead, which has the most
test years, takes a weight of its own, chosen on its own errors. The published municipal
total is then (1 - w) x bottom-up + w x births, the difference shown as its own column
(`ajuste_nascimentos`); a municipality without a complete birth cohort keeps its bottom-up
total. States and the country add up their municipalities.

The school forecasts are not moved: scaling each municipality's schools by one factor to
the blended total cost per-school skill on the real census (early elementary five years
ahead +14.3 to +9.5 % over persistence, creche +2.4 to -7.4 %), since a school's best forecast
is not its share of the best total (closures and moves are no school's own trend).

The intervals of totals are calibrated on the walk-forward errors of municipal totals as
published (`walk_forward_totals`: the chosen model's sums per municipality plus the new
offerings the origin expected, blended at the horizon's weight, against the municipality's
census total), so the new offerings and the births blend are inside the errors they are
calibrated on.

On the real census of Alagoas with the real births (back-test of the published files, 8
origins; benchmarks/README.md, "Tenth session") the walk-forward chose w = 1 for early
elementary at every origin and cut its municipal error five years ahead from 10.9 % to
7.7 %, pre-school's from 21.0 % to 10.1 % and creche's from 41.8 % to 29.7 %. One year
ahead's own weight ("2026-12-07 (second session)") cut its municipal error for pre-school
from 5.8 to 5.6 % (below persistence's 5.7 %), early elementary from 2.8 to 2.7 % and high
school from 5.6 to 5.5 %, and left the later horizons as they were; choosing their weight
without one year ahead's errors cost high school up to 0.15 points there.

A state's total is the sum of its municipalities, so the births weight sets its level too.
A second weight for the state's total, the municipalities scaled to it, was back-tested and
not taken ("2026-12-07 (third session)"): it brought creche's state error one year ahead
from 5.8 to 3.7 % (3.6 % without births) and raised its municipal error five years ahead from
30.6 to 37.2 %, above persistence's 35.0 %; births' fall is right municipality by
municipality and wrong for the state, where the policy's openings add back what the schools
overshoot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from censo_forecast.demography import known
from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import YEAR
from censo_forecast.outputs import ACTUAL, FORECAST, HORIZON
from censo_forecast.statepaths import at_origins, state_history

log = logging.getLogger(__name__)
MUNICIPALITY = "CO_MUNICIPIO"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the births' weight; 0: bottom-up


@dataclass(frozen=True)
class Choice:
    """A stage's births weights, its own (`weight`, two years ahead and beyond) and one year
    ahead's (`one_year`), with the walk-forward errors of municipal totals (weighted absolute
    %; the stage's a mean over its validated horizons) at every weight they were chosen
    from; and what applying them reads, computed once: the municipalities' census totals and
    recent openings at every origin (`statepaths.at_origins`) and the births each
    (municipality, year) knows (`known.known_table`)."""

    weight: float
    errors: dict[float, float]
    one_year: float
    one_year_errors: dict[float, float]
    origins: pl.DataFrame
    births: pl.DataFrame

    def at(self, horizon: int) -> float:
        """The births' weight `horizon` years ahead."""
        return self.one_year if horizon == 1 else self.weight

    def weights(self, horizons: list[int]) -> dict[int, float]:
        return {h: self.at(h) for h in horizons}


def birth_ratios(births: pl.DataFrame, flag: str, horizons: list[int]) -> pl.DataFrame:
    """(CO_MUNICIPIO, origin, horizonte, ratio): the stage's birth cohort h years after each
    origin over its cohort at the origin, as known at the origin (null: incomplete cohort),
    from `known.known_table`'s rows."""
    stage = catalog.stage(flag)
    columns = list(known.BIRTH_COLUMNS)
    return pl.concat([births.select(MUNICIPALITY, pl.col(YEAR).alias("origin"), pl.lit(h, dtype=pl.Int32).alias(HORIZON),
                                    known.birth_ratio(stage, h, columns).cast(pl.Float64).alias("ratio"))
                      for h in horizons])


def _with_targets(sums: pl.DataFrame, origins: pl.DataFrame, ratios: pl.DataFrame | None) -> pl.DataFrame:
    """`sums` (CO_MUNICIPIO, origin, horizonte, schools) with the municipality's census total at
    the origin (t0), the new offerings expected (h x the origin's recent openings) and the
    birth ratio (null without `ratios`)."""
    keys: dict[str, pl.DataType] = {MUNICIPALITY: sums.schema[MUNICIPALITY], "origin": pl.Int64(), HORIZON: pl.Int32()}
    sums = sums.cast({k: v for k, v in keys.items() if k in sums.columns})
    origins = (origins.select(MUNICIPALITY, "origin", pl.col("total").alias("t0"), "new")
               .cast({k: keys[k] for k in (MUNICIPALITY, "origin")}))
    joined = sums.join(origins, on=[MUNICIPALITY, "origin"], how="left")
    joined = (joined.join(ratios.cast({k: v for k, v in keys.items()}), on=[MUNICIPALITY, "origin", HORIZON], how="left")
              if ratios is not None else joined.with_columns(pl.lit(None, dtype=pl.Float64).alias("ratio")))
    return joined.with_columns((pl.col(HORIZON) * pl.col("new").fill_null(0.0)).alias("new"))


def _target(weight: float) -> pl.Expr:
    """The municipality's blended total (bottom-up where its cohort is incomplete)."""
    bottom_up = pl.col("schools") + pl.col("new")
    births = (pl.col("t0") * pl.col("ratio")).fill_null(bottom_up)
    return (1 - weight) * bottom_up + weight * births


def _walk_forward_sums(calibration: pl.DataFrame) -> pl.DataFrame:
    """(CO_MUNICIPIO, NU_ANO_CENSO, horizonte, CO_UF, schools, origin): the walk-forward's
    forecast of each municipality's schools per test year and horizon."""
    return (calibration.group_by(MUNICIPALITY, YEAR, HORIZON)
            .agg(pl.col("CO_UF").first(), pl.col(FORECAST).sum().alias("schools"))
            .with_columns((pl.col(YEAR) - pl.col(HORIZON)).alias("origin")))


def _scored(calibration: pl.DataFrame, origins: pl.DataFrame, ratios: pl.DataFrame | None) -> pl.DataFrame:
    """The walk-forward's municipal sums with what makes them totals (`_with_targets`) and the
    census total of the test year (actual: 0 where no school of the municipality offered the
    stage then), where the origin's total is known and the census has the test year."""
    actual = origins.select(MUNICIPALITY, pl.col("origin").alias(YEAR), pl.col("total").alias("actual"))
    sums = _walk_forward_sums(calibration).filter(pl.col(YEAR) <= origins["origin"].max())
    return (_with_targets(sums, origins, ratios)
            .join(actual.cast({MUNICIPALITY: sums.schema[MUNICIPALITY], YEAR: sums.schema[YEAR]}), on=[MUNICIPALITY, YEAR], how="left")
            .filter(pl.col("t0").is_not_null()).with_columns(pl.col("actual").fill_null(0.0)))


def choose(calibration: pl.DataFrame, history: pl.DataFrame, births: pl.DataFrame, flag: str) -> Choice | None:
    """The births weights, the stage's and one year ahead's, with the lowest walk-forward error
    of municipal totals (module docstring); None when no test year can compare."""
    origins = at_origins(history, MUNICIPALITY)
    scored = _scored(calibration, origins, birth_ratios(births, flag, sorted(calibration[HORIZON].unique().to_list())))
    if scored.height == 0 or scored.select(pl.col("actual").sum()).item() <= 0:
        return None
    per_horizon = scored.group_by(HORIZON).agg(
        *(((_target(w) - pl.col("actual")).abs().sum() / pl.col("actual").sum()).alias(str(w)) for w in WEIGHTS))
    one = per_horizon.filter(pl.col(HORIZON) == 1)
    errors = _mean_errors(per_horizon)
    one_year = _mean_errors(one) if one.height else errors
    return Choice(_best(errors), errors, _best(one_year), one_year, origins, births)


def _mean_errors(per_horizon: pl.DataFrame) -> dict[float, float]:
    return {w: float(per_horizon.select(pl.col(str(w)).mean()).item()) for w in WEIGHTS}


def _best(errors: dict[float, float]) -> float:
    return min(WEIGHTS, key=lambda w: (errors[w], w))  # a tie keeps the smaller weight


def choices(panel: pl.DataFrame, calibration: dict[str, pl.DataFrame], *, say: bool = False) -> dict[str, Choice]:
    """Per stage of school age with calibration, its births weight; empty without demography.
    With `say`, a log line per stage with the errors it was chosen by."""
    births = known.known_table(panel)
    if births is None:
        return {}
    out = {}
    for flag, table in calibration.items():
        if catalog.stage(flag).ages is None or table.height == 0:
            continue
        choice = choose(table, state_history(panel, flag, MUNICIPALITY), births, flag)
        if choice is None:
            continue
        out[flag] = choice
        if say:
            log.info("%s: municipal totals one year ahead %s, two years ahead and beyond %s (walk-forward weighted "
                     "absolute error of municipal totals by births weight, one year ahead: %s; beyond: %s)", flag,
                     _blend_words(choice.one_year), _blend_words(choice.weight), _listed(choice.one_year_errors),
                     _listed(choice.errors))
    return out


def _blend_words(weight: float) -> str:
    return f"blended with births at weight {weight:g}" if weight else "bottom-up"


def _listed(errors: dict[float, float]) -> str:
    return ", ".join(f"{w:g}: {100 * e:.1f} %" for w, e in errors.items())


def walk_forward_totals(calibration: pl.DataFrame, panel: pl.DataFrame, flag: str, choice: Choice | None) -> pl.DataFrame:
    """(CO_MUNICIPIO, CO_UF, NU_ANO_CENSO, horizonte, previsao, y_true): each municipality's
    walk-forward total as the municipal files make it (its schools' sum plus the new
    offerings the origin expected, blended with births at the horizon's weight; bottom-up
    without `choice`) and its census total, per test year and horizon: what the intervals of
    totals are calibrated on. The state's reconciliation (`reconcile`) is left out: scaling
    these totals by it made municipal coverage no better on the real census (benchmarks/README.md)."""
    one_year, beyond = (choice.one_year, choice.weight) if choice is not None else (0.0, 0.0)
    origins = choice.origins if choice is not None else at_origins(state_history(panel, flag, MUNICIPALITY), MUNICIPALITY)
    horizons = sorted(calibration[HORIZON].unique().to_list())
    ratios = birth_ratios(choice.births, flag, horizons) if choice and (one_year or beyond) else None
    blended = pl.when(pl.col(HORIZON) == 1).then(_target(one_year)).otherwise(_target(beyond))
    return _scored(calibration, origins, ratios).select(
        MUNICIPALITY, "CO_UF", YEAR, HORIZON, blended.alias(FORECAST), pl.col("actual").alias(ACTUAL))


def births_totals(choice: Choice, flag: str, horizon: int) -> pl.DataFrame:
    """(CO_MUNICIPIO, total): each municipality's births-scaled total `horizon` years after the
    last census year, its census total then times its birth ratio (null where the cohort is
    incomplete)."""
    last = choice.origins["origin"].max()
    now = choice.origins.filter(pl.col("origin") == last)
    ratio = birth_ratios(choice.births.filter(pl.col(YEAR) == last), flag, [horizon]).select(MUNICIPALITY, "ratio")
    return now.join(ratio.cast({MUNICIPALITY: now.schema[MUNICIPALITY]}), on=MUNICIPALITY, how="left").select(
        MUNICIPALITY, (pl.col("total") * pl.col("ratio")).alias("total"))
