"""Accuracy benchmark: skill over persistence and over cohort progression (Coorte) per stage,
on the synthetic census and on its placebo twin (independent year-over-year changes), where
a learner beating the better of the two baselines by more than ~1% means leakage.

    python benchmarks/accuracy.py [--schools 3000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import polars as pl

from censo_forecast import outputs, pipeline
from censo_forecast.config import load_settings
from censo_forecast.inep import synthetic
from censo_forecast.inep.catalog import parse_years


def skill_table(raw: Path, work: Path) -> pl.DataFrame:
    s = load_settings(None, raw_dir=raw, cache_dir=work / "cache", out_dir=work / "out", offline=True, device="cpu")
    pipeline.run(s)
    table = pl.read_csv(work / "out" / outputs.RESULTS)
    return table.select("etapa", "modelo", "MAE_Media_CV", "Skill_MAE_vs_Persistencia", "Skill_MAE_vs_Coorte", "Escolhido")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schools", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        for kind in ("synthetic", "placebo"):
            raw = Path(tmp) / kind / "raw"
            synthetic.generate(raw, synthetic.SynthSettings(parse_years("2011-2025"), args.schools, args.seed, placebo=kind == "placebo"))
            table = skill_table(raw, Path(tmp) / kind)
            for r in table.iter_rows(named=True):
                rows.append({"census": kind, **r})
    result = pl.DataFrame(rows)
    chosen = result.filter(pl.col("Escolhido")).select("census", "etapa", pl.col("modelo").alias("chosen"))
    for baseline in ("Persistencia", "Coorte"):
        wide = result.pivot(on="modelo", index=["census", "etapa"], values=f"Skill_MAE_vs_{baseline}").join(chosen, on=["census", "etapa"])
        with pl.Config(tbl_rows=40, tbl_cols=12, float_precision=3, tbl_width_chars=180):
            print(f"skill = 1 - MAE/MAE({baseline}), walk-forward 2014-2025, {args.schools} schools, seed {args.seed}")
            print(wide)
    best_baseline = result.filter(pl.col("modelo").is_in(["Persistencia", "Coorte"])).group_by("census", "etapa").agg(
        pl.col("MAE_Media_CV").min().alias("best"))
    placebo = result.filter((pl.col("census") == "placebo") & pl.col("modelo").is_in(["LightGBM", "XGBoost", "Voting"]))
    placebo = placebo.join(best_baseline, on=["census", "etapa"]).with_columns((1 - pl.col("MAE_Media_CV") / pl.col("best")).alias("skill"))
    print(f"largest learner skill over the better baseline on the placebo census: {placebo['skill'].max():+.3f}")
    print(json.dumps(result.to_dicts()))


if __name__ == "__main__":
    main()
