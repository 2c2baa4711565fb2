"""OpenMP waiting at national fold size: what passive waiting costs a fit alone, and what a
short spin or LightGBM's row-wise histograms would give back.

`boosters.OPENMP_WAIT` makes OpenMP threads wait passively (`busy.py` says why: beside a busy
process, spinning waits made a stage 3.8x slower). That was measured on training sets below
the one-thread threshold; a national fold (200,000 pairs, the row cap) fits on two threads,
where every parallel region's end is a wait. Here one fold of that size, the refit's of one
stage of a synthetic census, is fitted by both learners in a fresh process per setting
(OpenMP reads its policy once, when a library loads it), alone and beside a CPU-bound
process, and each time is a ratio to the shipping setting alone, same run. The predictions'
digest shows whether a setting changes the model (a wait policy cannot; row-wise histograms
should not).

    python benchmarks/threads.py [--schools 40000] [--stage IN_FUND_AF] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from busy import SPINNER
from common import DATA, national_census

SETTINGS = {  # name -> (environment, LightGBM's extra parameters)
    "passive (ships)": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "passive, row-wise": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"force_row_wise": True}),
    "spin 10,000": ({"GOMP_SPINCOUNT": "10000"}, {}),
    "spin 10,000, row-wise": ({"GOMP_SPINCOUNT": "10000"}, {"force_row_wise": True}),
    "libgomp's default spin": ({}, {}),
}

FIT = r"""
import hashlib, json, os, sys, time
env, extra = json.loads(sys.argv[3]), json.loads(sys.argv[4])
os.environ.pop("OMP_WAIT_POLICY", None)
os.environ.update(env)
import numpy as np
from censo_forecast import boosters, features, horizons
boosters.OPENMP_WAIT = {}  # the setting under test, not the shipping one
from censo_forecast.config import ModelSettings
from censo_forecast.inep import ingest
from censo_forecast.panel import build_panel
from censo_forecast.stagedata import LocalStageData
cache, flag = sys.argv[1], sys.argv[2]
panel = build_panel(ingest.load_cache(cache, ingest.cached_years(cache)))
data = LocalStageData(features.stage_rows(panel, flag, horizons=5), horizons=5)
s = ModelSettings()
train = data.training_pairs(max(data.origin_years()), s.train_window_years, s.max_training_rows)
X = horizons.matrix(train)
y = train["y_true"].to_numpy() - np.nan_to_num(X[:, features.ANCHOR_INDEX])
out = {"rows": len(y)}
for name in ("LightGBM", "XGBoost"):
    adapter = boosters.adapter(name)
    params = {**adapter.params(s, "cpu", 2), **(extra if name == "LightGBM" else {})}
    started = time.perf_counter()
    booster = adapter.fit(X, y, params)
    out[name] = round(time.perf_counter() - started, 2)
    out[name + "_digest"] = hashlib.sha256(np.asarray(adapter.predict(booster, X), dtype=np.float64).tobytes()).hexdigest()[:12]
print(json.dumps(out))
"""


def _fit(cache: str, stage: str, env: dict, extra: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", FIT, cache, stage, json.dumps(env), json.dumps(extra)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best(cache: str, stage: str, env: dict, extra: dict, repeats: int) -> dict:
    """The fastest of `repeats` fits per learner (timing noise only adds)."""
    runs = [_fit(cache, stage, env, extra) for _ in range(repeats)]
    return {**runs[0], **{k: min(r[k] for r in runs) for k in ("LightGBM", "XGBoost")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schools", type=int, default=40_000)
    parser.add_argument("--years", default="2011-2025")
    parser.add_argument("--stage", default="IN_FUND_AF")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    raw = national_census(args.schools, args.years)
    cache = DATA / raw.parent.name / "cache"
    if not any(cache.glob("*.parquet")):
        subprocess.run([sys.executable, "-m", "censo_forecast.cli", "ingest", "--raw-dir", str(raw), "--cache-dir", str(cache)],
                       check=True, capture_output=True)
    rows = {}
    for name, (env, extra) in SETTINGS.items():
        alone = _best(str(cache), args.stage, env, extra, args.repeats)
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
        try:
            busy = _best(str(cache), args.stage, env, extra, args.repeats)
        finally:
            spinner.kill()
            spinner.wait()
        rows[name] = {"alone": alone, "busy": busy}
    base = rows["passive (ships)"]["alone"]
    base_total = base["LightGBM"] + base["XGBoost"]
    print(f"{args.stage}, one fold of {base['rows']:,} pairs, two threads, best of {args.repeats}")
    print(f"{'setting':24} {'LightGBM s':>10} {'XGBoost s':>10} {'both, alone':>12} {'beside a busy process':>22}  digests")
    for name, r in rows.items():
        a, b = r["alone"], r["busy"]
        both, busy_both = a["LightGBM"] + a["XGBoost"], b["LightGBM"] + b["XGBoost"]
        print(f"{name:24} {a['LightGBM']:>10.2f} {a['XGBoost']:>10.2f} {both / base_total:>11.2f}x "
              f"{busy_both:>8.2f} s ({busy_both / both:.1f}x alone)  {a['LightGBM_digest']} {a['XGBoost_digest']}")
    print(json.dumps({"stage": args.stage, "schools": args.schools, **rows}))


if __name__ == "__main__":
    main()
