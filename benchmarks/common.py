"""Helpers shared by the benchmarks: a cached national-scale census and child-process measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def national_census(schools: int = 200_000, years: str = "2011-2025", seed: int = 1, placebo: bool = False) -> Path:
    """Generate (once) a synthetic census of national size; reused across benchmark runs."""
    tag = f"n{schools}_y{years}_s{seed}{'_placebo' if placebo else ''}"
    raw = DATA / tag / "raw"
    done = raw / ".complete"
    if not done.exists():
        cmd = [
            sys.executable,
            "-m",
            "censo_forecast.cli",
            "synth",
            "--out",
            str(raw),
            "--years",
            years,
            "--schools",
            str(schools),
            "--seed",
            str(seed),
        ]
        if placebo:
            cmd.append("--placebo")
        print(f"generating {tag} ...", flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"  generated in {time.perf_counter() - started:.0f}s", flush=True)
        done.write_text("ok\n")
    return raw


def measure(code: str, *args: str) -> dict:
    """Run Python code in a fresh child process; return its wall time, peak RSS and JSON result."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    out_lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out_lines.append(line)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{''.join(out_lines)[-3000:]}")
    result = json.loads(out_lines[-1]) if out_lines else {}
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, **result}
