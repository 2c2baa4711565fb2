"""The Dask engine: the same pipeline with its heavy steps on a Dask cluster.

What runs where:
- ingest: one task per census year on the workers (they read the raw zips and write the
  Parquet cache, so both folders must be shared storage or fsspec URLs they can reach);
- features: the schools are split by state (each school goes with the state it is first
  seen in) into partitions that stay in the workers' memory; each partition builds its
  panel from the cache and its feature rows; municipal and state sums are added up
  across partitions on the client, so they equal one machine's exactly;
- training: each learner's Dask twin (`lightgbm.dask`, `xgboost.dask`, `DASK_TRAINERS`
  below) on the partitions where they lie; the fitted boosters come back to the client
  as native boosters, like any other;
- the client keeps what is small: one test year's rows at a time, predictions, SHAP,
  the forecast year's features, totals and the report.

Lost workers: partitions are futures whose tasks the scheduler can rerun from the cache,
so a worker that dies between tasks costs a recomputation, not a wrong result. A worker
that dies inside a distributed training ends that training with an error (LightGBM's and
XGBoost's collective steps cannot continue without it); rerun: finished stages resume.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import polars as pl

from censo_forecast import boosters, features, machine, models, storage
from censo_forecast import horizons as horizons_mod
from censo_forecast.demography import known
from censo_forecast.engine import EngineError
from censo_forecast.features import ORIGIN_YEAR
from censo_forecast.inep import ingest
from censo_forecast.learners import ModelFactory
from censo_forecast.outputs import ACTUAL
from censo_forecast.panel import SCHOOL, YEAR, build_panel, stage_view
from censo_forecast.stagedata import StageData

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = "30s"  # how long to try reaching a --scheduler


@contextmanager
def connect(settings) -> Iterator[DaskEngine]:
    """The engine on the settings' scheduler, or on a LocalCluster of `settings.workers`
    one-thread workers started (and stopped) here."""
    with _client(settings.scheduler, settings.workers) as client:
        engine = DaskEngine(client, settings.cache)
        log.info("%s", engine.describe())
        yield engine


@contextmanager
def _client(scheduler: str | None, workers: int) -> Iterator:
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise EngineError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    cpus = machine.available_cpus()
    if workers > cpus:  # more one-thread processes than CPUs only thrash (8x slower, 4.5 GB at 50 on 2)
        log.warning("--workers %d: this machine gives this process %d CPU(s); starting %d workers", workers, cpus, cpus)
        workers = cpus
    # the workers load the boosters' OpenMP with the same passive wait as this process
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env=dict(boosters.OPENMP_WAIT)) as cluster, Client(cluster) as client:
        yield client


# ------------------------------------------------------------------ worker tasks
def _load_partition(cache_dir, hashes: dict[int, str], schools: np.ndarray) -> pl.DataFrame:
    frames = [ingest.read_cached_year(cache_dir, y, h).filter(pl.col(SCHOOL).is_in(schools)) for y, h in sorted(hashes.items())]
    return build_panel(pl.concat(frames, how="vertical"))


def _stage_sums(panel: pl.DataFrame, flag: str) -> dict[str, pl.DataFrame]:
    return features.area_sums(stage_view(panel, flag))


def _stage_rows(panel: pl.DataFrame, flag: str, sums: dict[str, pl.DataFrame], last_year: int, horizons: int,
                demography: pl.DataFrame | None) -> pl.DataFrame:
    return features.stage_rows(known.join_known(panel, demography), flag, sums, last_year, horizons=horizons)


def _filter(rows: pl.DataFrame, predicate: pl.Expr) -> pl.DataFrame:
    return rows.filter(predicate)


def _xy(rows: pl.DataFrame, origin: int, window_years: int, ahead: list[int], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    train = horizons_mod.training_pairs(rows, origin, window_years, ahead, fraction)
    return horizons_mod.matrix(train), train[ACTUAL].to_numpy().astype(np.float64)


# ------------------------------------------------------------------ the boosters' Dask twins
def _lightgbm_dask(client, X, target, params: dict):
    lgb = boosters.library("lightgbm")
    params = {k: v for k, v in params.items() if k != "n_jobs"}  # each worker uses its own threads
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        return lgb.DaskLGBMRegressor(client=client, **params).fit(X, target).to_local().booster_


def _xgboost_dask(client, X, target, params: dict):
    xgb = boosters.library("xgboost")
    from xgboost import dask as dxgb

    trained = dxgb.DaskXGBRegressor(**params)
    trained.client = client
    trained.fit(X, target)
    booster = xgb.Booster()
    booster.load_model(bytearray(trained.get_booster().save_raw("json")))
    return booster


# learner name -> training on dask arrays spread over a cluster; returns the native booster
DASK_TRAINERS = {"LightGBM": _lightgbm_dask, "XGBoost": _xgboost_dask}


# ------------------------------------------------------------------ engine
class DaskEngine:
    """Partitions of schools on a Dask cluster, built from the Parquet cache."""

    def __init__(self, client, cache_dir):
        self.client = client
        self.cache_dir = storage.normalize(cache_dir)
        self._parts: dict[tuple[int, ...], list] = {}

    def ingest(self, raw_dir, cache_dir, years, *, jobs=None, force=False, progress=None) -> ingest.IngestReport:
        """One task per year on the workers (`jobs` does not apply); the client keeps the manifest."""
        return ingest.ingest(raw_dir, cache_dir, years, force=force, progress=progress,
                             executor=self.client.get_executor())

    def select_device(self, requested: str) -> models.Device:
        """The device as a worker sees it: that is where the boosters train."""
        return self.client.submit(models.select_device, requested, pure=False).result()

    def __deepcopy__(self, memo) -> DaskEngine:
        return self  # a connection to the cluster, shared by copies

    def describe(self) -> str:
        workers = self.client.scheduler_info().get("workers", {})
        return f"dask: scheduler {self.client.scheduler.address}, {len(workers)} worker(s), {self.threads_per_worker} thread(s) each"

    @property
    def threads_per_worker(self) -> int:
        workers = self.client.scheduler_info().get("workers", {}).values()
        return max(1, min((w.get("nthreads", 1) for w in workers), default=1))

    def partitions(self, years: list[int]) -> list:
        """One future per state: the panel of the schools first seen in that state."""
        key = tuple(sorted(years))
        if key not in self._parts:
            hashes = ingest.parquet_hashes(self.cache_dir, list(key))  # each worker verifies what it reads
            ids = pl.concat([ingest.read_cached_year(self.cache_dir, y, h, [SCHOOL, YEAR, "CO_UF"]) for y, h in hashes.items()])
            home = ids.sort(YEAR).group_by(SCHOOL, maintain_order=True).agg(pl.col("CO_UF").first())
            groups = home.group_by("CO_UF").agg(pl.col(SCHOOL)).sort("CO_UF")
            self._parts[key] = [
                self.client.submit(_load_partition, self.cache_dir, hashes, np.asarray(schools))
                for uf, schools in groups.iter_rows()
            ]
            log.info("dask: %d school partitions (one per state) on %d workers", len(self._parts[key]),
                     len(self.client.scheduler_info().get("workers", {})))
        return self._parts[key]

    def stage_data(self, panel: pl.DataFrame, flag: str, horizons: int) -> DaskStageData:
        """The stage's feature rows, per partition, where the partitions lie.

        `panel` is the client's copy: the workers build the same years from the cache, and join
        the births and population it carries (`known.known_table`, one small table).
        """
        years = sorted(panel[YEAR].unique().to_list())
        parts = self.partitions(years)
        sums = features.combine_area_sums(self.client.gather(self.client.map(_stage_sums, parts, flag=flag)))
        shared = self.client.scatter(sums, broadcast=True)
        table = known.known_table(panel)
        demography = self.client.scatter(table, broadcast=True) if table is not None else None
        rows = self.client.map(_stage_rows, parts, flag=flag, sums=shared, last_year=years[-1], horizons=horizons,
                               demography=demography)
        return DaskStageData(self, rows, horizons)


class DaskStageData(StageData):
    """A stage's rows as futures, one per partition; only filtered slices come to the client."""

    def __init__(self, engine: DaskEngine, parts: list, horizons: int):
        self.engine = engine
        self.horizons = horizons
        self.client = engine.client
        self.parts = parts
        self._years: list[int] | None = None

    @property
    def height(self) -> int:
        return sum(self.client.gather(self.client.map(len, self.parts)))

    def origin_years(self) -> list[int]:
        if self._years is None:
            years = self.client.gather(self.client.map(lambda r: r[ORIGIN_YEAR].unique().to_list(), self.parts))
            self._years = sorted({y for part in years for y in part})
        return self._years

    def rows(self, predicate: pl.Expr) -> pl.DataFrame:
        found = self.client.gather(self.client.map(_filter, self.parts, predicate=predicate))
        return pl.concat(found).sort(SCHOOL, ORIGIN_YEAR)

    def fit_on(self, origin: int, factory: ModelFactory, names: tuple[str, ...], ahead: list[int]) -> dict | None:
        """The learners fitted where the rows lie, on the same sampled pairs as one machine's
        (the fraction comes from every partition's count; the sample is a hash of the rows)."""
        import dask.array as da
        from dask import delayed

        window = factory.settings.train_window_years
        counts = self.client.map(horizons_mod.pairs_in_window, self.parts, origin=origin, window_years=window, ahead=ahead)
        fraction = horizons_mod.sampling_fraction(sum(self.client.gather(counts)), factory.row_cap(ahead, self.horizons))
        pairs = self.client.map(_xy, self.parts, origin=origin, window_years=window, ahead=ahead, fraction=fraction)
        sizes = self.client.gather(self.client.map(lambda p: len(p[1]), pairs))
        width = len(features.FEATURES)
        X_parts, y_parts = [], []
        for pair, n in zip(pairs, sizes, strict=True):
            if n:  # empty partitions would give a worker nothing to train on
                X_parts.append(da.from_delayed(delayed(operator.getitem)(pair, 0), shape=(n, width), dtype=np.float32))
                y_parts.append(da.from_delayed(delayed(operator.getitem)(pair, 1), shape=(n,), dtype=np.float64))
        if not X_parts:
            return None
        X, y = da.concatenate(X_parts), da.concatenate(y_parts)
        fitted = {}
        for name in names:
            learner = factory.learner(name, jobs=self.engine.threads_per_worker)
            booster = DASK_TRAINERS[name](self.client, X, learner.change(X, y), learner.booster_params())
            fitted[name] = learner.set_booster(booster, width)
        return fitted
