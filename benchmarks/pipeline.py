"""Whole-pipeline benchmark at national scale, with the seed's way and mlforecast side by side.

1. ours: `censo-forecast run` (all ten stages, walk-forward, SHAP, refit, forecasts, report)
   in a child process; wall time and peak RSS per phase from its phase log and an RSS
   sampler running beside it.
2. the seed's way, same data, same run, for the phases it has:
   - load: pandas read_csv of every column of the extracted CSVs, then downcasting;
   - features: a reconstruction of the seed's recipe (the seed script is not in this
     repository): pandas, row-shift lags per school (`groupby().shift`, which silently
     spans gaps), rolling means and differences, on the all-columns frame;
   - training: the seed fitted LightGBM, XGBoost and a VotingRegressor that refits both;
     measured on the largest fold of the largest stage and extrapolated to the whole
     validation through the ratio to our two fits on the same rows.
3. Nixtla mlforecast's `preprocess` on the same per-stage panels (lags 1-3 and rolling
   means 2 and 3 of enrollment, after `fill_gaps`, which mlforecast needs because it
   shifts rows), against our `stage_rows` (46 features and the truth).

    python benchmarks/pipeline.py [--schools 200000] [--years 2011-2024] [--skip-seed | --features-only]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import measure, national_census
from ingest import BASELINE as SEED_LOAD_AND_COUNT
from ingest import SEED_LOAD

OURS = r"""
import json, sys, threading, time
import psutil
from censo_forecast import pipeline
from censo_forecast.config import load_settings
raw, work = sys.argv[1], sys.argv[2]
proc, samples, stop = psutil.Process(), [], threading.Event()
def sample():
    while not stop.is_set():
        samples.append((time.perf_counter(), proc.memory_info().rss))
        time.sleep(0.1)
thread = threading.Thread(target=sample, daemon=True)
t0 = time.perf_counter(); thread.start()
settings = load_settings(None, raw_dir=raw, cache_dir=f"{work}/cache", out_dir=f"{work}/out", offline=True, fresh=True, device="cpu")
record = pipeline.run(settings)
stop.set(); thread.join()
phases = []
for p in record["phases"]:
    window = [rss for t, rss in samples if p["start_s"] <= t - t0 <= p["start_s"] + p["seconds"] + 0.1]
    phases.append({**p, "peak_rss_mb": round(max(window, default=0) / 2**20)})
print(json.dumps({"phases": phases, "total_s": record["timings_s"]["total"], "stages": record["stages"]}))
"""

FEATURES_OURS = r"""
import json, sys, time
from censo_forecast import features
from censo_forecast.inep import catalog, ingest
from censo_forecast.panel import build_panel
cache = sys.argv[1]
t = time.perf_counter()
panel = build_panel(ingest.load_cache(cache, ingest.cached_years(cache)))
load = time.perf_counter() - t
per_stage, rows = {}, 0
for stage in catalog.STAGES:
    t = time.perf_counter()
    frame = features.stage_rows(panel, stage.flag, horizons=5)  # the run's default: truth for five horizons
    per_stage[stage.flag] = round(time.perf_counter() - t, 2)
    rows += frame.height
print(json.dumps({"load_s": round(load, 2), "features_s": round(sum(per_stage.values()), 2), "rows": rows, "per_stage": per_stage,
                  "n_features": len(features.FEATURES)}))
"""

FEATURES_MLFORECAST = r"""
import json, sys, time
import polars as pl
from mlforecast import MLForecast
from mlforecast.lag_transforms import RollingMean
from utilsforecast.preprocessing import fill_gaps
from censo_forecast.inep import catalog, ingest
from censo_forecast.panel import build_panel, stage_view
cache = sys.argv[1]
panel = build_panel(ingest.load_cache(cache, ingest.cached_years(cache)))
per_stage, rows = {}, 0
for stage in catalog.STAGES:
    # the same panel our features start from: (school, year) rows of schools offering the stage
    series = (stage_view(panel, stage.flag).filter(pl.col("offers"))
              .select(pl.col("CO_ENTIDADE").alias("unique_id"), pl.col("NU_ANO_CENSO").alias("ds"), pl.col("enrollment").alias("y"))
              .to_pandas())
    t = time.perf_counter()
    # mlforecast shifts rows, so a year without the stage must become an explicit row first;
    # its target cannot be missing, so the gap is filled with 0 (our features keep it null)
    full = fill_gaps(series, freq=1, id_col="unique_id", time_col="ds")
    full["y"] = full["y"].fillna(0)
    fcst = MLForecast(models=[], freq=1, lags=[1, 2, 3], lag_transforms={1: [RollingMean(2), RollingMean(3)]}, num_threads=2)
    out = fcst.preprocess(full, static_features=[], dropna=False)
    per_stage[stage.flag] = round(time.perf_counter() - t, 2)
    rows += len(out)
print(json.dumps({"features_s": round(sum(per_stage.values()), 2), "rows": rows, "per_stage": per_stage}))
"""

FEATURES_SEED = SEED_LOAD + r"""
import time
from censo_forecast.inep import catalog
df = total
del frames
t = time.perf_counter()
per_stage, rows = {}, 0
for stage in catalog.STAGES:
    s = time.perf_counter()
    d = (df[df[stage.flag] == 1][["CO_ENTIDADE", "NU_ANO_CENSO", "CO_MUNICIPIO", stage.enrollment, stage.teachers, stage.classes]]
         .sort_values(["CO_ENTIDADE", "NU_ANO_CENSO"]))
    g = d.groupby("CO_ENTIDADE")
    for col in (stage.enrollment, stage.teachers, stage.classes):
        for k in (1, 2, 3):
            d[f"{col}_lag{k}"] = g[col].shift(k)
    d["roll2"] = g[stage.enrollment].transform(lambda x: x.shift(1).rolling(2).mean())
    d["roll3"] = g[stage.enrollment].transform(lambda x: x.shift(1).rolling(3).mean())
    d["diff1"] = d[f"{stage.enrollment}_lag1"] - d[f"{stage.enrollment}_lag2"]
    d["ratio_teacher"] = d[f"{stage.enrollment}_lag1"] / (d[f"{stage.teachers}_lag1"] + 1e-6)
    d["ratio_class"] = d[f"{stage.enrollment}_lag1"] / (d[f"{stage.classes}_lag1"] + 1e-6)
    d["muni_total"] = d.groupby(["CO_MUNICIPIO", "NU_ANO_CENSO"])[stage.enrollment].transform("sum")
    per_stage[stage.flag] = round(time.perf_counter() - s, 2)
    rows += len(d)
print(json.dumps({"features_s": round(time.perf_counter() - t, 2), "rows": rows, "per_stage": per_stage}))
"""

TRAINING = r"""
import json, sys, time
import numpy as np, polars as pl
from censo_forecast import features, horizons
from censo_forecast.config import ModelSettings
from censo_forecast.learners import ModelFactory
from censo_forecast.stagedata import LocalStageData
from censo_forecast.inep import ingest
from censo_forecast.models import select_device
from censo_forecast.panel import build_panel
cache, flag = sys.argv[1], sys.argv[2]
panel = build_panel(ingest.load_cache(cache, ingest.cached_years(cache)))
settings, device = ModelSettings(), select_device("cpu")
data = LocalStageData(features.stage_rows(panel, flag, horizons=5), horizons=5)
# the largest fold (the refit's), sampled as a run samples it
train = data.training_pairs(max(data.origin_years()), settings.train_window_years, settings.max_training_rows)
X, y = horizons.matrix(train), train["y_true"].to_numpy()
t = time.perf_counter(); ModelFactory(settings, device, 2).fit_learners(X, y); ours = time.perf_counter() - t
import lightgbm as lgb, xgboost as xgb
from sklearn.ensemble import VotingRegressor
s = settings
make_l = lambda: lgb.LGBMRegressor(n_estimators=s.n_estimators, learning_rate=s.learning_rate, num_leaves=s.num_leaves, n_jobs=2,
                                   verbose=-1)
make_x = lambda: xgb.XGBRegressor(n_estimators=s.n_estimators, learning_rate=s.learning_rate, max_depth=s.max_depth,
                                  tree_method="hist", n_jobs=2)
t = time.perf_counter()
make_l().fit(X, y); make_x().fit(X, y); VotingRegressor([("lgbm", make_l()), ("xgb", make_x())]).fit(X, y)
seed = time.perf_counter() - t
print(json.dumps({"stage": flag, "rows": len(y), "ours_s": round(ours, 1), "seed_s": round(seed, 1)}))
"""


def _mb(r: dict) -> str:
    return f"{r['peak_rss_mb']:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schools", type=int, default=200_000)
    parser.add_argument("--years", default="2011-2024")
    parser.add_argument("--skip-seed", action="store_true", help="only our pipeline and mlforecast")
    parser.add_argument("--features-only", action="store_true", help="only ingest, then our features against mlforecast's")
    parser.add_argument("--work", default=None, help="keep outputs in this folder (default: a temporary one)")
    args = parser.parse_args()
    raw = national_census(args.schools, args.years)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-pipeline-"))
    results: dict = {}
    cache = str(work / "cache")
    try:
        if args.features_only:
            subprocess.run([sys.executable, "-m", "censo_forecast.cli", "ingest", "--raw-dir", str(raw), "--cache-dir", cache], check=True)
        else:
            ours = measure(OURS, str(raw), str(work))
            results["ours"] = ours
            print(f"\nours: whole pipeline {ours['wall_s']:.0f} s, peak RSS {_mb(ours)} MB", flush=True)
            print(f"{'phase':28} {'wall s':>8} {'peak RSS MB':>12}")
            for p in ours["phases"]:
                print(f"{p['phase']:28} {p['seconds']:>8.1f} {p['peak_rss_mb']:>12}")
        steps = {"features_ours": (FEATURES_OURS, cache), "features_mlforecast": (FEATURES_MLFORECAST, cache)}
        if not (args.skip_seed or args.features_only):
            steps |= {"load_seed": (SEED_LOAD_AND_COUNT, str(raw), str(work / "extract")),
                      "features_seed": (FEATURES_SEED, str(raw), str(work / "extract")),
                      "training": (TRAINING, cache, "IN_FUND_AI")}
        for name, (code, *argv) in steps.items():
            results[name] = measure(code, *argv)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    fo, fm = results["features_ours"], results["features_mlforecast"]
    print(f"features, all stages: ours {fo['features_s']:.1f} s ({fo['n_features']} features, {fo['rows']} rows), "
          f"mlforecast preprocess {fm['features_s']:.1f} s (5 features, {fm['rows']} rows): {fm['features_s'] / fo['features_s']:.1f}x")
    if "training" in results:
        ingest_s = next(p["seconds"] for p in ours["phases"] if p["phase"] == "ingest")
        panel_s = next(p["seconds"] for p in ours["phases"] if p["phase"] == "panel")
        ls, fs, tr = results["load_seed"], results["features_seed"], results["training"]
        validate = sum(p["seconds"] for p in ours["phases"] if p["phase"].startswith("validate"))
        ratio = tr["seed_s"] / tr["ours_s"]
        print(f"load: seed {ls['wall_s']:.0f} s / {_mb(ls)} MB, ours ingest+panel {ingest_s + panel_s:.0f} s: "
              f"{ls['wall_s'] / (ingest_s + panel_s):.1f}x")
        print(f"features: seed recipe {fs['features_s']:.1f} s (peak {_mb(fs)} MB), ours {fo['features_s']:.1f} s: "
              f"{fs['features_s'] / fo['features_s']:.1f}x")
        print(f"training, {tr['stage']} largest fold ({tr['rows']} rows): seed 4 fits {tr['seed_s']:.0f} s, ours 2 fits "
              f"{tr['ours_s']:.0f} s ({ratio:.1f}x); validation extrapolated: seed ~{validate * ratio / 60:.0f} min, "
              f"ours {validate / 60:.0f} min")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
