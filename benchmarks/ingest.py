"""Ingest benchmark: our streaming typed ingest versus the seed's pandas way, same data, same run.

Baseline (what the seed did): extract each year's CSV to disk, pandas.read_csv every column,
then downcast numeric columns, keeping every year in memory.
Ours: `censo_forecast.inep.ingest.ingest` from the zips to Parquet, 2 years in parallel.
Each side runs in a fresh child process so that its peak RSS is its own. The comparison
covers the one-table years (the seed cannot read 2025's tables); then the last one-table
year and the multi-table year are ingested alone, each in its own process, to set the
layouts side by side.

    python benchmarks/ingest.py [--schools 200000] [--years 2011-2025]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile

from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import parse_years
from common import measure, national_census

OURS = r"""
import json, sys, time
from pathlib import Path
from censo_forecast.inep.ingest import ingest
from censo_forecast.inep.catalog import parse_years
raw, cache, years = Path(sys.argv[1]), Path(sys.argv[2]), parse_years(sys.argv[3])
report = ingest(raw, cache, years, jobs=2, force=True)
assert not report.failed, report.failed
import polars
rows = sum(polars.scan_parquet(str(p)).select(polars.len()).collect().item() for p in sorted(cache.glob("censo_*.parquet")))
print(json.dumps({"years": len(report.written), "rows": rows}))
"""

# the seed's load, shared with benchmarks/pipeline.py: leaves `total`, every year in one frame
SEED_LOAD = r"""
import json, sys, zipfile, re
from pathlib import Path
import pandas as pd
raw, work = Path(sys.argv[1]), Path(sys.argv[2])
frames = []
for zpath in sorted(p for p in raw.glob("microdados_censo_escolar_*.zip") if re.fullmatch(r"microdados_censo_escolar_\d{4}\.zip", p.name)):
    with zipfile.ZipFile(zpath) as zf:
        member = [n for n in zf.namelist() if re.search(r"microdados_ed_basica_\d{4}\.csv$", n, re.I)][0]
        csv_path = Path(zf.extract(member, work))
    df = pd.read_csv(csv_path, sep=";", encoding="latin-1", low_memory=False)
    for col in df.select_dtypes("number").columns:
        kind = "integer" if pd.api.types.is_integer_dtype(df[col]) else "float"
        df[col] = pd.to_numeric(df[col], downcast=kind)
    frames.append(df)
    csv_path.unlink()
total = pd.concat(frames, ignore_index=True)
"""

BASELINE = SEED_LOAD + r"""
print(json.dumps({"years": len(frames), "rows": len(total)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schools", type=int, default=200_000)
    parser.add_argument("--years", default="2011-2025")
    args = parser.parse_args()
    raw = national_census(args.schools, args.years)
    years = parse_years(args.years)
    single = [y for y in years if y <= catalog.SINGLE_TABLE_LAST_YEAR]
    spec = f"{single[0]}-{single[-1]}"
    size_mb = sum(p.stat().st_size for p in raw.glob("*.zip") if catalog.parse_zip_name(p.name)[0] <= catalog.SINGLE_TABLE_LAST_YEAR) / 1e6
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        ours = measure(OURS, str(raw), f"{work}/cache", spec)
        print(f"ours:     {ours}", flush=True)
        base = measure(BASELINE, str(raw), f"{work}/extract")
        print(f"baseline: {base}", flush=True)
        alone = {y: measure(OURS, str(raw), f"{work}/alone{y}", str(y)) for y in (single[-1], *[y for y in years if y not in single])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speed = base["wall_s"] / ours["wall_s"]
    memory = base["peak_rss_mb"] / ours["peak_rss_mb"]
    print()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, zips {size_mb:.0f} MB")
    print(f"{'':10} {'years':>5} {'rows':>10} {'wall s':>8} {'peak RSS MB':>12}")
    for name, r in (("baseline", base), ("ours", ours)):
        print(f"{name:10} {r['years']:>5} {r['rows']:>10} {r['wall_s']:>8.1f} {r['peak_rss_mb']:>12.0f}")
    print(f"speed-up {speed:.1f}x, peak memory {memory:.1f}x lower")
    print("\none year alone, by layout (fresh process each):")
    for year, r in alone.items():
        zips = [p for p in raw.glob(f"microdados_censo_escolar_{year}*.zip")]
        layout = "tables" if year > catalog.SINGLE_TABLE_LAST_YEAR else "one table"
        print(f"  {year} ({layout:9}) rows {r['rows']:>7}  wall {r['wall_s']:5.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
              f"zip {zips[0].stat().st_size / 1e6:5.1f} MB")
    print(json.dumps({"speedup": round(speed, 2), "memory_ratio": round(memory, 2), "ours": ours, "baseline": base,
                      "alone": alone}), file=sys.stderr)


if __name__ == "__main__":
    main()
