"""On a machine with an NVIDIA GPU: what `--device auto` finds, and one small fit on it beside
the same fit on the CPU (forecasts, MAE of the walk-forward, seconds).

    python benchmarks/gpu.py [--schools 600] [--work DIR]

It needs no SHAP and no network: a synthetic census is written, ingested and fitted through
the Python API.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl

from censo_forecast import boosters, models
from censo_forecast.config import ModelSettings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import ingest, synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schools", type=int, default=600)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    found = {name: boosters.adapter(name).gpu_device() for name in models.LEARNERS}
    device = models.select_device("auto")
    print(json.dumps({"gpus": models._cuda_devices(), "gpu_builds": found, "auto": device.name,
                      "learners": device.learners, "reason": device.reason}))
    work = args.work or Path(tempfile.mkdtemp())
    synthetic.generate(work / "raw", synthetic.SynthSettings(years=list(range(2011, 2026)), schools=args.schools, seed=3))
    ingest.ingest(work / "raw", work / "cache", jobs=2).raise_for_failures()
    census = ingest.load_cache(work / "cache", ingest.cached_years(work / "cache"))
    results = {}
    for requested in ("auto", "cpu"):
        fc = EnrollmentForecaster(["IN_FUND_AI", "IN_MED"], horizons=3, model=ModelSettings(n_estimators=100),
                                  device=requested, min_train_years=8, n_jobs=2)
        started = time.perf_counter()
        fc.fit(census)
        seconds = time.perf_counter() - started
        schools = fc.predict(census)
        voting = fc.cv_.summary.filter(pl.col("modelo") == models.ENSEMBLE).select("etapa", "horizonte", "MAE_Media_CV")
        results[requested] = schools
        print(json.dumps({"requested": requested, "device": fc.device_.name, "learners": fc.device_.learners,
                          "fit_s": round(seconds, 1), "schools": schools.height, "voting_mae": voting.to_dicts()}))
    gpu_rows, cpu_rows = results["auto"], results["cpu"]
    both = gpu_rows.join(cpu_rows, on=["etapa", "CO_ENTIDADE", "horizonte"], suffix="_cpu")
    gap = (both["previsao"] - both["previsao_cpu"]).abs()
    print(json.dumps({"same_rows": both.height == gpu_rows.height == cpu_rows.height, "max_forecast_gap": float(gap.max()),
                      "mean_forecast_gap": float(gap.mean()), "mean_forecast": float(both["previsao"].mean())}))


if __name__ == "__main__":
    main()
