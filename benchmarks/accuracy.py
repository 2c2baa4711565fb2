"""Accuracy benchmark per stage and horizon: skill over persistence and over cohort
progression (Coorte), state-total error and interval coverage, on the synthetic census and
on its placebo twin (independent year-over-year changes), where a learner beating the better
of the two baselines by more than ~1% means leakage.

With --designs it also measures, on the synthetic census, what the run's design choices
cost: one model per horizon instead of one model with the horizon as a feature, and the
training-row cap at the national sampling fraction.

    python benchmarks/accuracy.py [--schools 3000] [--seed 7] [--designs]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from censo_forecast import features, horizons, learners, load_census, models, outputs, pipeline
from censo_forecast.config import ModelSettings, load_settings
from censo_forecast.engine import LocalEngine
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import catalog, synthetic
from censo_forecast.inep.catalog import MAJOR_STAGES as MAJOR
from censo_forecast.inep.catalog import parse_years
from censo_forecast.stagedata import LocalStageData

# the national run's fraction of training pairs kept by the row cap (200,000 of the largest
# stage's ~3.6 M pairs a fit, IN_FUND; the other stages keep more): what --designs applies to
# this census's stages to price the sampling, an upper bound for all but the largest
NATIONAL_FRACTION = 0.056


def run_table(raw: Path, work: Path) -> pl.DataFrame:
    s = load_settings(None, raw_dir=raw, cache_dir=work / "cache", out_dir=work / "out", offline=True, device="cpu")
    pipeline.run(s)
    return pl.read_csv(work / "out" / outputs.RESULTS).join(constant_shift(work / "out" / outputs.CV_PREDICTIONS),
                                                             on=["etapa", "horizonte"], how="left")


def constant_shift(cv_predictions: Path) -> pl.DataFrame:
    """Per stage and horizon, the MAE (mean over test years, as MAE_Media_CV) of persistence
    times the one constant that fits the test rows best: an upper bound of what a common
    shift of every school buys, known to no model at its origin."""
    cv = pl.read_parquet(cv_predictions, columns=["etapa", "horizonte", "NU_ANO_CENSO", outputs.ACTUAL, "Persistencia"])
    grid = np.linspace(0.8, 1.2, 401)
    rows = []
    for (flag, h), group in cv.group_by("etapa", "horizonte"):
        last, actual = group["Persistencia"].to_numpy(), group[outputs.ACTUAL].to_numpy()
        best = grid[int(np.argmin([np.abs(c * last - actual).mean() for c in grid]))]
        mae = (group.with_columns((pl.col("Persistencia") * best - pl.col(outputs.ACTUAL)).abs().alias("err"))
               .group_by("NU_ANO_CENSO").agg(pl.col("err").mean())["err"].mean())
        rows.append({"etapa": flag, "horizonte": h, "shift": float(best), "MAE_shifted": float(mae)})
    return pl.DataFrame(rows)


class PerHorizonData(LocalStageData):
    """The rejected design: one learner per horizon, each trained on that horizon's pairs only."""

    def fit_learners(self, origin, factory, names=models.LEARNERS):
        train = self.training_pairs(origin, factory.settings.train_window_years, factory.settings.max_training_rows)
        per_h = {}
        for (h,), rows in train.group_by(features.HORIZON_FEATURE):
            per_h[int(h)] = factory.fit_learners(horizons.matrix(rows), rows[outputs.ACTUAL].to_numpy())
        for h in range(1, self.horizons + 1):  # early origins have no pairs that far ahead: the nearest fitted
            per_h.setdefault(h, per_h[min(per_h, key=lambda k: (abs(k - h), k))])
        fitted = {name: learners.by_horizon({h: f[name] for h, f in per_h.items()})
                  for name in (*models.LEARNERS, models.ENSEMBLE)}
        return {name: fitted[name] for name in (*names, models.ENSEMBLE) if name in fitted}


class PerHorizonEngine(LocalEngine):
    def stage_data(self, panel, flag, horizons):
        return PerHorizonData(features.stage_rows(panel, flag, horizons=horizons), horizons)


def design_costs(cache: Path, default: pl.DataFrame) -> pl.DataFrame:
    """Voting's MAE per stage and horizon under each rejected design, against the run's
    default (`default`: the run's resultados_finais rows of this census)."""
    census = load_census(cache)
    years = census["NU_ANO_CENSO"].n_unique()
    biggest = max(census.filter(pl.col(s.flag) == 1).height for s in catalog.STAGES) / years  # offering schools a year
    cap = int(NATIONAL_FRACTION * biggest * 25)  # ~25 pairs per school (5 horizons x 5 window years)
    designs = {
        "one model per horizon": dict(engine=PerHorizonEngine()),
        f"row cap {cap:,} (national fraction)": dict(model=ModelSettings(max_training_rows=cap)),
    }
    rows = []
    for name, options in designs.items():
        started = time.perf_counter()
        cv = EnrollmentForecaster(device="cpu", **options).cross_validate(census)
        seconds = time.perf_counter() - started
        voting = cv.summary.filter(pl.col("modelo") == models.ENSEMBLE).select("etapa", "horizonte", "MAE_Media_CV")
        rows.append(voting.with_columns(pl.lit(name).alias("design"), pl.lit(round(seconds, 1)).alias("seconds")))
    base = default.filter(pl.col("modelo") == models.ENSEMBLE).select("etapa", "horizonte", pl.col("MAE_Media_CV").alias("base"))
    return pl.concat(rows).join(base, on=["etapa", "horizonte"]).with_columns(
        (pl.col("MAE_Media_CV") / pl.col("base") - 1).alias("MAE_change"))


def report(result: pl.DataFrame, schools: int, seed: int) -> None:
    chosen = result.filter(pl.col("Escolhido"))
    for baseline in ("Persistencia", "Coorte"):
        wide = (result.filter(pl.col("census") == "synthetic")
                .pivot(on="modelo", index=["etapa", "horizonte"], values=f"Skill_MAE_vs_{baseline}")
                .join(chosen.filter(pl.col("census") == "synthetic").select("etapa", "horizonte", pl.col("modelo").alias("chosen")),
                      on=["etapa", "horizonte"]).sort("etapa", "horizonte"))
        print(f"skill = 1 - MAE/MAE({baseline}) by stage and horizon, {schools} schools, seed {seed}")
        print(wide)
    print("chosen model per stage and horizon: state-total error and coverage (synthetic census)")
    print(chosen.filter(pl.col("census") == "synthetic").select(
        "etapa", "horizonte", "modelo", "Skill_MAE_vs_Persistencia", "Skill_MAE_vs_Coorte", "APE_UFs_Media_CV",
        "Cobertura_80_CV", "Cobertura_95_CV").sort("etapa", "horizonte"))
    major = chosen.filter((pl.col("census") == "synthetic") & pl.col("etapa").is_in(MAJOR))
    print("major stages, by horizon: worst skill of the chosen model against each baseline, worst state-total error, "
          "coverage range")
    print(major.group_by("horizonte").agg(
        pl.col("Skill_MAE_vs_Persistencia").min(), pl.col("Skill_MAE_vs_Coorte").min(), pl.col("APE_UFs_Media_CV").max(),
        pl.col("Cobertura_80_CV").min().alias("cov80_min"), pl.col("Cobertura_80_CV").max().alias("cov80_max"),
        pl.col("Cobertura_95_CV").min().alias("cov95_min"), pl.col("Cobertura_95_CV").max().alias("cov95_max")).sort("horizonte"))
    best = result.filter(pl.col("modelo").is_in(["Persistencia", "Coorte"])).group_by("census", "etapa", "horizonte").agg(
        pl.col("MAE_Media_CV").min().alias("best"))
    placebo = (result.filter((pl.col("census") == "placebo") & pl.col("modelo").is_in(list(models.LEARNERS) + [models.ENSEMBLE]))
               .join(best, on=["census", "etapa", "horizonte"])
               .with_columns((1 - pl.col("MAE_Media_CV") / pl.col("best")).alias("skill")))
    print("placebo census: largest learner skill over the better of Persistencia and Coorte, by horizon")
    print(placebo.group_by("horizonte").agg(pl.col("skill").max(), pl.col("etapa").sort_by("skill").last(),
                                            pl.col("modelo").sort_by("skill").last()).sort("horizonte"))
    # the placebo's schools drift together (Deriva, the compounded aggregate change, beats persistence
    # more the further ahead): past the first year the learners are held to the best of all three
    best3 = result.filter(pl.col("modelo").is_in(list(models.BASELINES))).group_by("census", "etapa", "horizonte").agg(
        pl.col("MAE_Media_CV").min().alias("best3"))
    placebo = placebo.join(best3, on=["census", "etapa", "horizonte"]).with_columns(
        (1 - pl.col("MAE_Media_CV") / pl.col("best3")).alias("skill3"))
    print("placebo census: largest learner skill over the best baseline, Deriva included (leakage above ~+0.01)")
    print(placebo.group_by("horizonte").agg(pl.col("skill3").max(), pl.col("etapa").sort_by("skill3").last(),
                                            pl.col("modelo").sort_by("skill3").last()).sort("horizonte"), flush=True)
    # a learner may estimate a shift common to every school more closely than a baseline (Deriva
    # takes it from one year): held also to persistence times the test rows' best constant
    placebo = placebo.with_columns((1 - pl.col("MAE_Media_CV") / pl.min_horizontal("best3", "MAE_shifted")).alias("skill4"))
    print("placebo census: largest learner skill over the best baseline or persistence times the best constant")
    print(placebo.group_by("horizonte").agg(pl.col("skill4").max(), pl.col("etapa").sort_by("skill4").last(),
                                            pl.col("shift").min().alias("shift_min"), pl.col("shift").max().alias("shift_max"))
          .sort("horizonte"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schools", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--designs", action="store_true", help="also price the design choices (synthetic census)")
    args = parser.parse_args()
    config = pl.Config(tbl_rows=80, tbl_cols=14, float_precision=3, tbl_width_chars=200)
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp, config:
        tables = []
        for kind in ("synthetic", "placebo"):
            raw = Path(tmp) / kind / "raw"
            synthetic.generate(raw, synthetic.SynthSettings(parse_years("2011-2025"), args.schools, args.seed, placebo=kind == "placebo"))
            tables.append(run_table(raw, Path(tmp) / kind).with_columns(pl.lit(kind).alias("census")))
        result = pl.concat(tables)
        report(result, args.schools, args.seed)
        print(json.dumps(result.to_dicts()), flush=True)
        if args.designs:
            designs = design_costs(Path(tmp) / "synthetic" / "cache", result.filter(pl.col("census") == "synthetic"))
            print("design choices: Voting's MAE against the default (one model, horizon as a feature), synthetic census")
            print(designs.pivot(on="design", index=["etapa", "horizonte"], values="MAE_change").sort("etapa", "horizonte"))
            print(designs.group_by("design").agg(pl.col("MAE_change").mean().alias("mean_MAE_change"),
                                                 pl.col("seconds").first()).sort("design"))
            print(json.dumps(designs.to_dicts()))


if __name__ == "__main__":
    main()
