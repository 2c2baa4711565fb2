"""A busy machine: one stage's walk-forward alone, beside a CPU-bound process, and beside a
second identical run, with today's thread policy (passive OpenMP waiting, threads from the
CPUs available, one thread for small training sets) and with the previous one (spinning
waits, every requested thread). Ratios are against the same policy alone, same run.

    python benchmarks/busy.py [--schools 3000] [--stage IN_FUND_AI] [--cap 240]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE_RUN = r"""
import json, os, sys, time
if os.environ.get("BENCH_POLICY") == "before":
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
from censo_forecast import features, machine, models, validation
from censo_forecast.config import ModelSettings, Settings
from censo_forecast.learners import ModelFactory
from censo_forecast.stagedata import LocalStageData
from censo_forecast.inep import ingest
from censo_forecast.panel import build_panel
if os.environ.get("BENCH_POLICY") == "before":
    machine.SMALL_TRAINING_ROWS = 0
cache, flag = sys.argv[1], sys.argv[2]
panel = build_panel(ingest.load_cache(cache, ingest.cached_years(cache)))
data = LocalStageData(features.stage_rows(panel, flag), 1)
years = sorted(panel["NU_ANO_CENSO"].unique().to_list())
started = time.perf_counter()
validation.walk_forward(data, flag, years, ModelFactory(ModelSettings(), models.select_device("cpu"), 2),
                        min_train_years=Settings().min_train_years)
print(json.dumps({"stage_s": round(time.perf_counter() - started, 2)}))
"""

SPINNER = "while True: pass"


def _code(policy: str) -> str:
    return f"import os; os.environ['BENCH_POLICY'] = {policy!r}\n" + STAGE_RUN


def _timed(cache: str, stage: str, policy: str, cap: float) -> float:
    """One stage's walk-forward in a fresh process (inf past the cap)."""
    try:
        done = subprocess.run([sys.executable, "-c", _code(policy), cache, stage], capture_output=True, text=True,
                              timeout=cap, check=True)
    except subprocess.TimeoutExpired:
        return float("inf")
    return json.loads(done.stdout.strip().splitlines()[-1])["stage_s"]


def _pair(cache: str, stage: str, policy: str, cap: float) -> float:
    """Two identical runs at once; the slower one's time."""
    procs = [subprocess.Popen([sys.executable, "-c", _code(policy), cache, stage], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + cap
    times = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            times.append(json.loads(out.strip().splitlines()[-1])["stage_s"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            times.append(float("inf"))
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schools", type=int, default=3000)
    parser.add_argument("--stage", default="IN_FUND_AI")
    parser.add_argument("--cap", type=float, default=240.0, help="seconds after which a run is stopped and reported as '>cap'")
    args = parser.parse_args()
    from censo_forecast.inep import ingest, synthetic
    from censo_forecast.inep.catalog import parse_years

    with tempfile.TemporaryDirectory(prefix="bench-busy-") as tmp:
        raw, cache = Path(tmp) / "raw", str(Path(tmp) / "cache")
        synthetic.generate(raw, synthetic.SynthSettings(parse_years("2011-2025"), args.schools, 7))
        ingest.ingest(raw, cache).raise_for_failures()
        rows = {}
        for policy in ("now", "before"):
            alone = _timed(cache, args.stage, policy, args.cap)
            spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
            try:
                busy = _timed(cache, args.stage, policy, args.cap)
            finally:
                spinner.kill()
                spinner.wait()
            pair = _pair(cache, args.stage, policy, args.cap)
            rows[policy] = {"alone_s": alone, "beside_busy_s": busy, "two_runs_s": pair}
            print(f"{policy:7} alone {alone:7.1f} s | beside a busy process {busy:7.1f} s ({busy / alone:.1f}x) | "
                  f"beside a second run {pair:7.1f} s ({pair / alone:.1f}x)", flush=True)
    print(json.dumps({"stage": args.stage, "schools": args.schools, **rows}))


if __name__ == "__main__":
    main()
