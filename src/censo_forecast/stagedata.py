"""A stage's origin rows where an engine keeps them: the seam between the walk-forward and an engine.

The walk-forward asks only for origin years, for rows to bring to the driver (one
origin's, the last census year's) and for learners fitted on the training pairs of an
origin, so a cluster engine can keep the rows where they lie. `LocalStageData` holds them
in one polars frame; `distributed.dask.DaskStageData` in partitions on a cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import polars as pl

from censo_forecast import horizons as horizons_mod
from censo_forecast import models
from censo_forecast.features import BIRTH_RATIO_FEATURE, ORIGIN_YEAR
from censo_forecast.learners import split_by_horizon
from censo_forecast.outputs import ACTUAL

if TYPE_CHECKING:
    from censo_forecast.learners import ModelFactory


class StageData(ABC):
    """A stage's origin rows (features and the truth per horizon, `features.stage_rows`).

    `horizons` is the number of years ahead the rows hold a truth for.
    """

    horizons: int

    @property
    @abstractmethod
    def height(self) -> int:
        """How many origin rows there are."""

    @abstractmethod
    def origin_years(self) -> list[int]:
        """Every origin year, sorted (the last census year's included)."""

    @abstractmethod
    def rows(self, predicate: pl.Expr) -> pl.DataFrame:
        """The rows matching `predicate`, on the driver, sorted by school and origin year."""

    @abstractmethod
    def fit_on(self, origin: int, factory: ModelFactory, names: tuple[str, ...], ahead: list[int]) -> dict | None:
        """The named learners fitted on the training pairs of `origin` at the years ahead in
        `ahead` (target year <= origin, the window, sampled to the row cap); None without pairs."""

    def fit_learners(self, origin: int, factory: ModelFactory, names: tuple[str, ...] = models.LEARNERS) -> dict:
        """The named learners for forecasts from `origin`, and Voting when both are named: the
        shared model of every horizon, and a model of its own for each of the first years
        ahead (`ModelFactory.own_horizons`; the shared one serves an own horizon without pairs)."""
        every = horizons_mod.up_to(self.horizons)
        wanted = factory.own_horizons(self.horizons)
        shared_wanted = bool(set(every) - set(wanted))
        fits = self.fit_groups(origin, factory, names, [[h] for h in wanted] + ([every] if shared_wanted else []))
        own = {h: f for h, f in zip(wanted, fits[:len(wanted)], strict=True) if f is not None}
        shared = fits[-1] if shared_wanted else None
        if not shared_wanted and len(own) < len(every):  # an own horizon without pairs: the shared model serves it
            shared = self.fit_on(origin, factory, names, every)
        if shared is None and not own:
            raise ValueError(f"no training pairs with a target year <= {origin}")
        return split_by_horizon(shared, own, names)

    def fit_groups(self, origin: int, factory: ModelFactory, names: tuple[str, ...],
                   groups: list[list[int]]) -> list[dict | None]:
        """`fit_on` for each list of years ahead in `groups`, in order (an engine may fit them at once)."""
        return [self.fit_on(origin, factory, names, ahead) for ahead in groups]

    def origin_rows(self, origin: int) -> pl.DataFrame:
        """The rows of one origin year."""
        return self.rows(pl.col(ORIGIN_YEAR) == origin)

    def baselines(self) -> tuple[str, ...]:
        """The baselines the stage's walk-forward compares: Demografia only where the last
        origin's rows have a birth ratio (demography given, and the stage made for an age)."""
        last = self.rows((pl.col(ORIGIN_YEAR) == max(self.origin_years())) & pl.col(BIRTH_RATIO_FEATURE).is_not_null())
        return models.BASELINES if last.height else tuple(b for b in models.BASELINES if b != models.DEMOGRAPHY)


class LocalStageData(StageData):
    """The rows in one polars frame, in this process: the local engine."""

    def __init__(self, frame: pl.DataFrame, horizons: int = 1):
        self.frame = frame
        self.horizons = horizons

    @property
    def height(self) -> int:
        return self.frame.height

    def origin_years(self) -> list[int]:
        return sorted(self.frame[ORIGIN_YEAR].unique().to_list())

    def rows(self, predicate: pl.Expr) -> pl.DataFrame:
        return self.frame.filter(predicate)

    def training_pairs(self, origin: int, window_years: int, max_rows: int, ahead: list[int] | None = None) -> pl.DataFrame:
        """The stacked pairs a fit for `origin` sees at the years ahead in `ahead` (default:
        every horizon): target <= origin, window, sampled to the cap."""
        ahead = horizons_mod.up_to(self.horizons) if ahead is None else ahead
        pairs = horizons_mod.pairs_in_window(self.frame, origin, window_years, ahead)
        fraction = horizons_mod.sampling_fraction(pairs, max_rows)
        return horizons_mod.training_pairs(self.frame, origin, window_years, ahead, fraction)

    def fit_on(self, origin: int, factory: ModelFactory, names: tuple[str, ...], ahead: list[int]) -> dict | None:
        return self.fit_groups(origin, factory, names, [ahead])[0]

    def fit_groups(self, origin: int, factory: ModelFactory, names: tuple[str, ...],
                   groups: list[list[int]]) -> list[dict | None]:
        """Every group's learners fitted side by side (`ModelFactory.fit_many`), the largest first."""
        window = factory.settings.train_window_years
        trains = [self.training_pairs(origin, window, factory.row_cap(ahead, self.horizons), ahead) for ahead in groups]
        inputs = {i: (horizons_mod.matrix(train), train[ACTUAL].to_numpy()) for i, train in enumerate(trains) if train.height}
        tasks = [(i, name) for i in sorted(inputs, key=lambda i: -trains[i].height) for name in names]
        fitted = dict(zip(tasks, factory.fit_many([(name, *inputs[i]) for i, name in tasks]), strict=True))
        return [{name: fitted[i, name] for name in names} if i in inputs else None for i in range(len(groups))]
