"""Walk-forward validation by calendar year and horizon, against the baselines.

The walk-forward steps through origin years O. At each, the learners are fitted on
(origin, horizon) pairs whose target year is <= O, then forecast every horizon h from the
rows of origin O (features from census years <= O): the forecast of year Y at horizon h
is made at origin Y - h and has seen nothing after it. Rows of h = 1 are the one-year
walk-forward: test year O + 1, trained on target years <= O. The tables made from its
predictions are in `results`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from censo_forecast import horizons as horizons_mod
from censo_forecast import models
from censo_forecast.features import HORIZON_FEATURE, ORIGIN_YEAR, TARGET_YEAR
from censo_forecast.inep.catalog import SCHOOL, YEAR
from censo_forecast.learners import ModelFactory
from censo_forecast.outputs import (
    ACTUAL,
    HORIZON,
    MAE,
    MODEL,
    ORIGIN,
    R2,
    RMSE,
    ROWS,
    STAGE,
    WAPE,
)
from censo_forecast.stagedata import StageData

log = logging.getLogger(__name__)


class CannotValidate(ValueError):
    """A stage without enough to validate it walk-forward (census years, offering schools); the message says which."""


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R2 and WAPE, in students."""
    y_true = np.asarray(y_true, dtype=np.float64)
    err = np.asarray(y_pred, dtype=np.float64) - y_true
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    total = float(np.sum(np.abs(y_true)))
    return {
        MAE: float(np.mean(np.abs(err))),
        RMSE: float(np.sqrt(np.mean(err**2))),
        R2: 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan"),
        WAPE: float(np.sum(np.abs(err))) / total if total > 0 else float("nan"),
    }


def origins(origin_years: list[int], census_years: list[int], min_train_years: int) -> list[int]:
    """The walk-forward's origins: from the one before the (min_train_years+1)-th census year
    (the first one-year test year) to the one before the last census year (the last with a
    truth); each needs an earlier origin to train on."""
    if len(census_years) <= min_train_years or not origin_years:
        return []
    years = sorted(census_years)
    first_test = years[min_train_years]
    return [o for o in sorted(origin_years) if first_test - 1 <= o < years[-1] and o > min(origin_years)]


@dataclass
class LastFold:
    """The last origin's fitted learners and its rows at every horizon (never trained on): what SHAP explains."""

    year: int  # the origin year
    learners: dict  # LightGBM, XGBoost, Voting
    X_test: np.ndarray


@dataclass
class StageCV:
    flag: str
    predictions: pl.DataFrame  # etapa, CO_ENTIDADE, NU_ANO_CENSO, ano_origem, horizonte, ..., y_true, one column per model
    folds: pl.DataFrame  # etapa, modelo, horizonte, NU_ANO_CENSO, MAE, RMSE, R2, WAPE, n
    seconds: float
    last_fold: LastFold | None = None  # not checkpointed


def walk_forward(data: StageData, flag: str, census_years: list[int], factory: ModelFactory, *,
                 min_train_years: int) -> StageCV:
    """Walk-forward over origin years and horizons for one stage.

    Parameters: `data` (an engine's StageData), `flag`, `census_years`; `factory` (the
    stage's models: hyper-parameters, training window, row cap, device, threads),
    `min_train_years` (census years before the first test year). Returns the stage's
    predictions and per-(horizon, test year) metrics for every model of MODEL_NAMES.
    Raises CannotValidate when the census has too few years.
    """
    started = time.perf_counter()
    ahead = horizons_mod.up_to(data.horizons)
    preds, fold_rows, last = [], [], None
    baselines = data.baselines()
    tested = origins(data.origin_years(), census_years, min_train_years)
    for origin in tested:
        rows = data.origin_rows(origin)
        test = horizons_mod.stack(rows, ahead).sort(HORIZON_FEATURE, SCHOOL)
        if test.height == 0:
            continue
        X_test = horizons_mod.matrix(test)
        fitted = {**{name: factory.baseline(name, data, origin) for name in baselines},
                  **data.fit_learners(origin, factory)}
        # students in float32 (exact for counts; a national walk-forward holds tens of millions of rows)
        out = test.select(pl.lit(flag).alias(STAGE), SCHOOL, pl.col(TARGET_YEAR).alias(YEAR),
                          pl.col(ORIGIN_YEAR).alias(ORIGIN), pl.col(HORIZON_FEATURE).cast(pl.Int32).alias(HORIZON),
                          "CO_MUNICIPIO", "CO_UF", pl.col(ACTUAL).cast(pl.Float32))
        out = out.with_columns(pl.Series(name, pred, dtype=pl.Float32) for name, pred in models.predict_all(fitted, X_test).items())
        fold_rows += fold_metrics(out, flag, list(fitted))
        preds.append(out)
        last = (origin, {k: fitted[k] for k in (*models.LEARNERS, models.ENSEMBLE)}, rows)
        mae = {row[MODEL]: row[MAE] for row in fold_rows if row[HORIZON] == 1 and row[YEAR] == origin + 1}
        log.info("%s origin %d: %d test rows over %d horizon(s); one year ahead MAE persistence %.2f / cohort %.2f / voting %.2f",
                 flag, origin, test.height, out[HORIZON].n_unique(),
                 *(mae[m] for m in (models.PERSISTENCE, models.COHORT, models.ENSEMBLE)))
    if last is None and len(census_years) > min_train_years:  # the years are enough; the schools are not
        offered = data.origin_years()
        raise CannotValidate(f"{flag}: schools offer it in census year(s) {offered[0]}-{offered[-1]} only, too few to train "
                             "and test a forecast on (too few schools offer this stage)" if offered else
                             f"{flag}: no school offers it (too few schools offer this stage)")
    if last is None:
        raise CannotValidate(f"{flag}: not enough years for walk-forward validation (census years {census_years}, "
                         f"min_train_years={min_train_years})")
    folds = pl.DataFrame(fold_rows).sort(HORIZON, YEAR, maintain_order=True)
    origin, learners, rows = last  # SHAP explains the last origin's rows at every horizon: built once, here
    last_fold = LastFold(origin, learners, horizons_mod.matrix(horizons_mod.stack(rows, ahead, truth=False)))
    return StageCV(flag, pl.concat(preds), folds, time.perf_counter() - started, last_fold)


def fold_metrics(predictions: pl.DataFrame, flag: str, names: list[str]) -> list[dict]:
    """One row of metrics per model of `names`, horizon and test year of a stage's predictions."""
    rows = []
    for (h, year), part in predictions.group_by(HORIZON, YEAR, maintain_order=True):
        y = part[ACTUAL].to_numpy()
        rows += [{STAGE: flag, MODEL: name, HORIZON: h, YEAR: year, **metrics(y, part[name].to_numpy()), ROWS: len(y)}
                 for name in names]
    return rows


def by_horizon(frame: pl.DataFrame):
    """(horizon, rows) of a predictions or forecast frame, in horizon order."""
    for h in sorted(frame[HORIZON].unique().to_list()):
        yield h, frame.filter(pl.col(HORIZON) == h)
