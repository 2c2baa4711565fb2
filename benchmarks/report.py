"""The report of a national run: how long it takes to write, how big it is, and how long
Chromium takes to open it as a planner would (load event, then the search table and the
map drawn by the script). Baseline, same run: the same page opened with JavaScript off, so
the ratio is what the page's script costs on top of parsing and decoding the page itself.

    python benchmarks/report.py --out /tmp/bench/out [--repeat 3]

--out is the output folder of a finished national run (benchmarks/pipeline.py --work W
leaves one in W/out). The report is rewritten beside it (report_bench_{lang}.html); the
run's own report.html is left alone.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from pathlib import Path

from censo_forecast.report import build_report

OPEN = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  return {load_ms: nav.loadEventEnd, dom_ms: nav.domContentLoadedEventEnd};
}"""


def sizes(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    images = re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", text)
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', text, re.S)
    return {"total_mb": len(text.encode()) / 1e6, "images_mb": sum(map(len, images)) / 1e6, "images": len(images),
            "data_mb": sum(len(b.encode()) for b in blocks) / 1e6}


def open_times(path: Path, repeat: int, script: bool) -> list[dict]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(repeat):
            context = browser.new_context(viewport={"width": 1366, "height": 900}, java_script_enabled=script)
            page = context.new_page()
            started = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            if script:  # the first screen is complete when the search table and the map are drawn
                page.wait_for_function("document.querySelectorAll('#municipios-table tbody tr').length > 0")
            wall = time.perf_counter() - started
            times.append({**page.evaluate(OPEN), "wall_s": wall})
            context.close()
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for lang in ("pt-BR", "en"):
        target = args.out / f"report_bench_{lang}.html"
        started = time.perf_counter()
        build_report(args.out, lang, target=target)
        written = time.perf_counter() - started
        size = sizes(target)
        with_script = open_times(target, args.repeat, script=True)
        without = open_times(target, args.repeat, script=False)
        median = statistics.median(t["wall_s"] for t in with_script)
        baseline = statistics.median(t["wall_s"] for t in without)
        print(f"{lang}: written in {written:.1f} s; {size['total_mb']:.1f} MB ({size['images']} images "
              f"{size['images_mb']:.1f} MB, data {size['data_mb']:.1f} MB)", flush=True)
        print(f"{lang}: opens in {median:.2f} s (median of {args.repeat}; load event "
              f"{statistics.median(t['load_ms'] for t in with_script) / 1000:.2f} s), without JavaScript "
              f"{baseline:.2f} s: ratio {median / baseline:.2f}", flush=True)


if __name__ == "__main__":
    main()
