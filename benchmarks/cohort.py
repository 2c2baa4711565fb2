"""`Coorte`, the cohort-progression baseline, against persistence on a real census (by default
Alagoas, `../shared/real/alagoas`), from the features alone (no model is fitted: seconds).

Per major stage (and all elementary) and horizon, over the origins given: the per-school
MAE of Coorte and of persistence (training's truth rule), their ratio, the largest Coorte
forecast and the largest multiple of the school's last enrollment (schools of 10 or more).

    python benchmarks/cohort.py [--raw DIR] [--origins 2013-2020] [--work DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from censo_forecast import features, horizons
from censo_forecast.inep import catalog, ingest
from censo_forecast.inep.catalog import MAJOR_STAGES
from censo_forecast.outputs import ACTUAL
from censo_forecast.panel import build_panel

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "real" / "alagoas"


def measure(panel: pl.DataFrame, flag: str, origins: list[int], ahead: list[int]) -> pl.DataFrame:
    rows = features.stage_rows(panel, flag, horizons=max(ahead))
    pairs = horizons.stack(rows.filter(pl.col(features.ORIGIN_YEAR).is_in(origins)), ahead)
    cohort_col, anchor = features.COHORT_FEATURE, features.ANCHOR
    return pairs.group_by(features.HORIZON_FEATURE).agg(
        pl.len().alias("pairs"),
        (pl.col(cohort_col) - pl.col(ACTUAL)).abs().mean().alias("mae_coorte"),
        (pl.col(anchor) - pl.col(ACTUAL)).abs().mean().alias("mae_persistence"),
        pl.col(cohort_col).max().alias("largest_coorte"),
        (pl.col(cohort_col) / pl.col(anchor)).filter(pl.col(anchor) >= 10).max().alias("largest_times_last"),
    ).with_columns((pl.col("mae_coorte") / pl.col("mae_persistence") - 1).alias("coorte_vs_persistence"),
                   pl.lit(flag).alias("etapa")).sort(features.HORIZON_FEATURE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=REAL)
    parser.add_argument("--origins", default="2013-2020")
    parser.add_argument("--work", type=Path, default=HERE / "data" / "cohort")
    args = parser.parse_args()
    years = sorted(ingest.raw_zips(args.raw))
    ingest.ingest(args.raw, args.work / "cache", years, jobs=2).raise_for_failures()
    panel = build_panel(ingest.load_cache(args.work / "cache", years))
    origins = catalog.parse_years(args.origins)
    table = pl.concat([measure(panel, flag, origins, [1, 2, 3, 4, 5]) for flag in (*MAJOR_STAGES, "IN_FUND")])
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        print(table.select("etapa", features.HORIZON_FEATURE, "pairs", "mae_coorte", "mae_persistence", "coorte_vs_persistence",
                           "largest_coorte", "largest_times_last"))


if __name__ == "__main__":
    main()
