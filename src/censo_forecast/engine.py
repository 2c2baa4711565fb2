"""Where the heavy steps run: one small interface, the local engine here, cluster engines
at the edge (`censo_forecast/distributed/<name>.py`).

An engine does four things: ingest census years into the cache, hold a stage's feature
rows and train learners on them (`stage_data`, a `stagedata.StageData`), say which
device the learners train on, and describe itself for the run record. Callers always
get an engine and never ask which one it is. An engine is a connection: copying it (as
`sklearn.base.clone` copies a forecaster's parameters) gives the same engine.

A new engine is one module, `distributed/<name>.py`, with a `connect(settings)` context
manager that yields an object with these methods; `--engine <name>` then finds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import polars as pl

from censo_forecast import features, models
from censo_forecast.config import LOCAL_ENGINE
from censo_forecast.inep import ingest as ingest_mod
from censo_forecast.stagedata import LocalStageData, StageData


class EngineError(Exception):
    """An engine that cannot start (missing package, unreachable scheduler); the message says why."""


class Engine(Protocol):
    def ingest(self, raw_dir, cache_dir, years: list[int], *, jobs: int, force: bool = False,
               progress: Callable[[int], None] | None = None) -> ingest_mod.IngestReport: ...

    def stage_data(self, panel: pl.DataFrame, flag: str, horizons: int) -> StageData: ...

    def select_device(self, requested: str) -> models.Device: ...

    def describe(self) -> str: ...


class LocalEngine:
    """Everything in this process: years on a thread pool, a stage's rows in one polars frame."""

    def ingest(self, raw_dir, cache_dir, years, *, jobs, force=False, progress=None):
        return ingest_mod.ingest(raw_dir, cache_dir, years, jobs=jobs, force=force, progress=progress)

    def stage_data(self, panel: pl.DataFrame, flag: str, horizons: int) -> StageData:
        return LocalStageData(features.stage_rows(panel, flag, horizons=horizons), horizons)

    def select_device(self, requested: str) -> models.Device:
        return models.select_device(requested)

    def describe(self) -> str:
        return LOCAL_ENGINE

    def __deepcopy__(self, memo) -> LocalEngine:
        return self


@contextmanager
def open_engine(settings) -> Iterator[Engine]:
    """The engine the settings name, connected for the duration of the block."""
    if settings.engine == LOCAL_ENGINE:
        yield LocalEngine()
        return
    try:
        module = importlib.import_module(f"censo_forecast.distributed.{settings.engine}")
    except ImportError as exc:
        raise EngineError(f"--engine {settings.engine} needs a package that is not installed: {exc} "
                          f"(pip install 'censo-forecast[{settings.engine}]')") from None
    with module.connect(settings) as engine:
        yield engine
