"""The per-stage loop that `EnrollmentForecaster.fit` and `pipeline.run` share (internal).

For each stage: its origin rows, where the engine keeps them; the walk-forward (or a
checkpoint of it); its tables, with the choice of model per horizon, made once; the refit
of the chosen models on the latest years; the calibration of their intervals. A stage
published as the sum of others among the stages (`coherence`) comes after them and is
derived from them: no walk-forward, model or refit of its own. A caller adds its own steps
around a stage through `Hooks` (the pipeline: checkpoints, SHAP, timings, the forecast from
the rows in hand).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import polars as pl

from censo_forecast import coherence, intervals, models, runlog, validation
from censo_forecast import horizons as horizons_mod
from censo_forecast.engine import Engine
from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import YEAR
from censo_forecast.learners import ModelFactory, by_horizon
from censo_forecast.outputs import ENSEMBLE, HORIZON, SUM_OF_PARTS
from censo_forecast.results import StageResults, stage_results
from censo_forecast.stagedata import StageData
from censo_forecast.validation import StageCV

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class StageFit:
    """One stage, validated and refitted."""

    flag: str
    cv: StageCV
    results: StageResults
    chosen: dict[int, str]  # years ahead -> model name
    model: models.ByHorizon | coherence.SumOfParts  # the chosen models, refitted on the latest years; or its parts'
    calibration: pl.DataFrame  # walk-forward residuals of the chosen model per horizon (`horizonte` column)


def carry_forward(validated: dict[int, str], ahead: list[int]) -> dict[int, str]:
    """Each horizon's model: its validated choice, else that of the farthest validated horizon
    before it (Voting where none is). Switching to another model exactly where nothing was
    measured would bend the published path for no reason: on a seven-year census the fifth
    year ahead jumped +10 % when it went to Voting after four years of the chosen model."""
    out: dict[int, str] = {}
    for h in ahead:
        before = [v for v in validated if v <= h]
        out[h] = validated[max(before)] if before else ENSEMBLE
    return out


def unvalidated(chosen: dict[int, str], calibration: pl.DataFrame | None) -> list[int]:
    """The horizons a stage forecasts without a walk-forward of their own (no residuals)."""
    validated = set() if calibration is None or calibration.height == 0 else set(calibration[HORIZON].unique().to_list())
    return [h for h in sorted(chosen) if h not in validated]


class Hooks:
    """What a caller adds around each stage; by default nothing."""

    def resumed(self, flag: str) -> StageCV | None:
        """A walk-forward computed earlier (a checkpoint), or None to validate now."""
        return None

    def validated(self, cv: StageCV) -> None:
        """Called once a stage's walk-forward is done, before the refit."""

    def refitted(self, fit: StageFit, forecast_rows: pl.DataFrame) -> None:
        """Called with the refitted stage and the origin rows of the last census year."""

    def derived(self, fit: StageFit) -> None:
        """Called with a stage derived from its parts (`coherence.SumOfParts`), after theirs."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


class StageRunner:
    """Validates and refits stage after stage with one engine and one model factory."""

    def __init__(self, engine: Engine, factory: ModelFactory, *, horizons: int, min_train_years: int,
                 hooks: Hooks | None = None):
        self.engine, self.factory = engine, factory
        self.horizons, self.min_train_years = horizons, min_train_years
        self.hooks = hooks or Hooks()
        self.skipped: dict[str, str] = {}  # stage -> why it could not be validated

    def fit_all(self, panel: pl.DataFrame, flags: list[str]) -> list[StageFit]:
        """Every stage that can be validated, validated and refitted (a sum of stages derived
        from its parts); the others are skipped with a warning naming why. Raises
        CannotValidate when none can."""
        return self._each_stage(panel, flags, self.fit_stage, self.derive_fit)

    def validate_all(self, panel: pl.DataFrame, flags: list[str]) -> list[tuple[StageCV, StageResults]]:
        """Every stage that can be validated, validated only (nothing refitted); skipped as in `fit_all`."""
        ahead = horizons_mod.up_to(self.horizons)
        return self._each_stage(panel, flags, lambda p, flag, years: self.validate_stage(p, flag, years)[1:],
                                lambda flag, parts: self._derive(flag, [(cv, carry_forward(r.chosen, ahead)) for cv, r in parts]))

    def _each_stage(self, panel: pl.DataFrame, flags: list[str], step: Callable[[pl.DataFrame, str, list[int]], T],
                    derive: Callable[[str, list[T]], T]) -> list[T]:
        """`step` for each stage, in the order of `flags`; a sum whose parts are all among
        them goes after its parts and is `derive`d from theirs (on its own if one is skipped)."""
        years = sorted(panel[YEAR].unique().to_list())
        sums = coherence.reconcilable(flags)
        done: dict[str, T] = {}
        skipped = self.skipped
        with runlog.Progress("stages", len(flags), unit="stage") as progress:
            for flag in [f for f in flags if f not in sums] + list(sums):
                parts = sums.get(flag, ())
                try:
                    if parts and all(p in done for p in parts):
                        done[flag] = derive(flag, [done[p] for p in parts])
                    else:
                        done[flag] = step(panel, flag, years)
                except validation.CannotValidate as exc:
                    skipped[flag] = str(exc)
                    log.warning("%s skipped: %s", flag, exc)
                progress.update()
        if not done:
            raise validation.CannotValidate("no stage could be validated: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        return [done[f] for f in flags if f in done]

    def validate_stage(self, panel: pl.DataFrame, flag: str, years: list[int]) -> tuple[StageData, StageCV, StageResults]:
        """A stage's rows, its walk-forward (or its checkpoint) and its tables, the choice among
        them; raises CannotValidate when it cannot be validated (no school offers it, too few years)."""
        with self.hooks.phase(f"features {flag}"):
            data = self.engine.stage_data(panel, flag, self.horizons)
        if data.height == 0:
            raise validation.CannotValidate("no school offers this stage in these census years")
        cv = self.hooks.resumed(flag)
        if cv is not None:
            log.info("%s: validation resumed from checkpoint", flag)
        else:
            with self.hooks.phase(f"validate {flag}"):
                cv = validation.walk_forward(data, flag, years, self.factory, min_train_years=self.min_train_years)
            log.info("%s: validated in %.1fs (%s)", flag, cv.seconds, catalog.stage(flag).label)
            self.hooks.validated(cv)
        return data, cv, stage_results(cv)

    def fit_stage(self, panel: pl.DataFrame, flag: str, years: list[int]) -> StageFit:
        """One stage validated (`validate_stage`), then refitted and calibrated."""
        data, cv, results = self.validate_stage(panel, flag, years)
        chosen = self._chosen(flag, results)
        with self.hooks.phase(f"refit {flag}"):
            model = self._refit(chosen, data, years[-1])
        fit = StageFit(flag, cv, results, chosen, model, _calibration(cv, chosen))
        self.hooks.refitted(fit, data.origin_rows(years[-1]))
        return fit

    def derive_fit(self, flag: str, parts: list[StageFit]) -> StageFit:
        """A sum of stages from its parts' fits: their walk-forward summed, the sum published
        at every horizon and calibrated on its residuals."""
        cv, results = self._derive(flag, [(part.cv, part.chosen) for part in parts])
        chosen = dict.fromkeys(horizons_mod.up_to(self.horizons), SUM_OF_PARTS)
        fit = StageFit(flag, cv, results, chosen, coherence.SumOfParts(tuple(p.flag for p in parts)), _calibration(cv, chosen))
        self.hooks.derived(fit)
        return fit

    def _derive(self, flag: str, parts: list[tuple[StageCV, dict[int, str]]]) -> tuple[StageCV, StageResults]:
        with self.hooks.phase(f"sum of parts {flag}"):
            cv = coherence.walk_forward(flag, parts)
            return cv, stage_results(cv, [part for part, _ in parts])

    def _chosen(self, flag: str, results: StageResults) -> dict[int, str]:
        """The validated choice per horizon; a horizon that could not be validated (`carry_forward`)
        carries the choice of the farthest validated one, without intervals."""
        ahead = horizons_mod.up_to(self.horizons)
        chosen = carry_forward(results.chosen, ahead)
        unvalidated = [h for h in ahead if h not in results.chosen]
        if unvalidated:
            source = max(results.chosen, default=None)
            log.warning("%s: %s year(s) ahead could not be validated (too few census years after the first test year); "
                        "%s, without intervals", flag, unvalidated,
                        f"they keep the model chosen for {source} year(s) ahead ({results.chosen[source]})" if source
                        else f"{ENSEMBLE} forecasts them")
        return chosen

    def _refit(self, chosen: dict[int, str], data: StageData, origin: int) -> models.ByHorizon:
        """Each horizon's chosen model, fitted for forecasts from `origin` (the last census year):
        the learners once, on the pairs up to `origin`, shared by the horizons that chose them."""
        wanted = set(chosen.values())
        names = models.LEARNERS if ENSEMBLE in wanted else tuple(n for n in models.LEARNERS if n in wanted)
        fitted = data.fit_learners(origin, self.factory, names) if names else {}
        for name in wanted & set(models.BASELINES):
            fitted[name] = self.factory.baseline(name, data, origin)
        return by_horizon({h: fitted[name] for h, name in chosen.items()})


def _calibration(cv: StageCV, chosen: dict[int, str]) -> pl.DataFrame:
    """The walk-forward rows of each horizon's chosen model, as interval calibration (`horizonte` column)."""
    return pl.concat([
        intervals.calibration_table(rows, chosen[h]).with_columns(pl.lit(h, dtype=pl.Int32).alias(HORIZON))
        for h, rows in validation.by_horizon(cv.predictions) if h in chosen])
