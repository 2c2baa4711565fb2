"""Rules for choosing a stage's model, replayed through a run's walk-forward predictions.

At each origin O the product can only choose from the folds whose test year is known then
(test year <= O). Each rule makes that choice at every origin and horizon, and is scored on
the forecasts made at O (test years O + h): what a published forecast would have got. The
predictions come from a finished run's `cv_predictions.parquet` (on the real census: the
back-test's last origin, `benchmarks/backtest.py`).

    python benchmarks/choice.py RUN_OUTPUT_FOLDER [--first-origin 2014]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from censo_forecast import models, outputs
from censo_forecast.inep.catalog import YEAR

KEYS = [outputs.STAGE, outputs.HORIZON]


def fold_errors(predictions: pl.DataFrame) -> pl.DataFrame:
    """MAE per (stage, horizon, origin, model), with the fold's test year."""
    names = [m for m in models.MODEL_NAMES if m in predictions.columns]
    long = predictions.unpivot(index=[*KEYS, outputs.ORIGIN, YEAR, outputs.ACTUAL], on=names, variable_name="model",
                               value_name="forecast")
    return long.group_by(*KEYS, outputs.ORIGIN, YEAR, "model").agg(
        (pl.col("forecast") - pl.col(outputs.ACTUAL)).abs().mean().alias("mae"))


def rule_all(known: pl.DataFrame) -> pl.DataFrame:
    """Today's rule: the lowest mean MAE over every known fold."""
    return known.group_by(*KEYS, "model").agg(pl.col("mae").mean())


def rule_recent(k: int):
    def rule(known: pl.DataFrame) -> pl.DataFrame:
        latest = known.group_by(KEYS).agg(pl.col(YEAR).max().alias("_last"))
        recent = known.join(latest, on=KEYS).filter(pl.col(YEAR) > pl.col("_last") - k)
        return recent.group_by(*KEYS, "model").agg(pl.col("mae").mean())
    rule.__doc__ = f"The lowest mean MAE over the folds of the last {k} known test years."
    return rule


def rule_relative(known: pl.DataFrame) -> pl.DataFrame:
    """The lowest mean of MAE relative to persistence's in the same fold (a bad year weighs as much as a calm one)."""
    base = known.filter(pl.col("model") == models.PERSISTENCE).select(*KEYS, outputs.ORIGIN, pl.col("mae").alias("_p"))
    rel = known.join(base, on=[*KEYS, outputs.ORIGIN]).with_columns((pl.col("mae") / pl.col("_p")).alias("mae"))
    return rel.group_by(*KEYS, "model").agg(pl.col("mae").mean())


def rule_worst(known: pl.DataFrame) -> pl.DataFrame:
    """The lowest worst-fold MAE relative to persistence's (minimax)."""
    base = known.filter(pl.col("model") == models.PERSISTENCE).select(*KEYS, outputs.ORIGIN, pl.col("mae").alias("_p"))
    rel = known.join(base, on=[*KEYS, outputs.ORIGIN]).with_columns((pl.col("mae") / pl.col("_p")).alias("mae"))
    return rel.group_by(*KEYS, "model").agg(pl.col("mae").max())


RULES = {"all folds (today)": rule_all, "last 3 test years": rule_recent(3), "last 2 test years": rule_recent(2),
         "mean relative to persistence": rule_relative, "worst fold relative to persistence": rule_worst}


def replay(errors: pl.DataFrame, rule, origins: list[int]) -> pl.DataFrame:
    """The rule's choice at each origin (folds with test year <= origin) scored at that origin."""
    rows = []
    for origin in origins:
        known = errors.filter(pl.col(YEAR) <= origin)
        if known.height == 0:
            continue
        chosen = rule(known).sort("mae").group_by(KEYS).agg(pl.col("model").first())
        scored = errors.filter(pl.col(outputs.ORIGIN) == origin)
        persistence = scored.filter(pl.col("model") == models.PERSISTENCE).select(*KEYS, pl.col("mae").alias("mae_persistence"))
        rows.append(scored.join(chosen, on=[*KEYS, "model"]).join(persistence, on=KEYS).select(
            *KEYS, pl.lit(origin).alias("origin"), "model", "mae", "mae_persistence"))
    return pl.concat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run's output folder")
    parser.add_argument("--first-origin", type=int, default=None, help="first origin a choice is scored at (default: the second)")
    args = parser.parse_args()
    errors = fold_errors(pl.read_parquet(args.run / outputs.CV_PREDICTIONS))
    origins = sorted(errors[outputs.ORIGIN].unique().to_list())
    origins = [o for o in origins if o >= (args.first_origin or origins[1])]
    tables = []
    for name, rule in RULES.items():
        scored = replay(errors, rule, origins)
        tables.append(scored.group_by(KEYS).agg(
            (1 - pl.col("mae").sum() / pl.col("mae_persistence").sum()).alias("skill"),
            (1 - pl.col("mae") / pl.col("mae_persistence")).min().alias("worst_origin")).with_columns(pl.lit(name).alias("rule")))
    table = pl.concat(tables)
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=220, float_precision=3):
        print(f"origins scored: {origins}")
        print(table.pivot(on="rule", index=KEYS, values="skill").sort(KEYS))
        print("worst single origin:")
        print(table.pivot(on="rule", index=KEYS, values="worst_origin").sort(KEYS))


if __name__ == "__main__":
    main()
