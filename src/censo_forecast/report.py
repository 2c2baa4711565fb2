"""report.html: one self-contained page (images inlined, no network) built from a run's outputs.

It reads what `run` wrote; it computes nothing the outputs do not already hold.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from censo_forecast import atomic, outputs, storage  # noqa: E402
from censo_forecast.inep import catalog  # noqa: E402
from censo_forecast.outputs import (  # noqa: E402
    COHORT, DRIFT, ENSEMBLE, FORECAST, HORIZON, LAST_ENROLLMENT, PERSISTENCE)

BANDS = ((95, "#c9d9ee"), (80, "#8fb1db"))  # interval level, fill colour: the fan
HISTORY_YEARS = 8  # census years drawn before the forecast

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:24px}
h1{font-size:1.6rem;margin:0 0 4px} h2{border-bottom:2px solid #d8dde6;padding-bottom:4px;margin-top:36px}
h3{margin:22px 0 8px} .muted{color:#5b6475} section{background:#fff;border-radius:8px;padding:8px 20px 18px;margin:18px 0;box-shadow:0 1px 2px #0001}
table{border-collapse:collapse;font-size:.9rem;margin:8px 0;width:100%} th,td{padding:4px 6px;border-bottom:1px solid #e3e6ec;text-align:right} th{font-size:.8rem;vertical-align:bottom}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left} th{background:#eef1f5}
td.pos{background:#e3f4e8;color:#165c2c;font-weight:600} td.neg{background:#fbe6e6;color:#8a1c1c}
tr.chosen td{font-weight:700} .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:12px}
img{max-width:100%;height:auto;border:1px solid #e3e6ec;border-radius:4px;background:#fff}
.scroll{overflow-x:auto} details{margin-top:10px} summary{cursor:pointer;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:.9rem} dt{font-weight:600}
@media print{body{background:#fff} section{box-shadow:none;break-inside:avoid} main{padding:0} h2{break-before:auto}}
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure_png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def metrics_table(results: pl.DataFrame, table_id: str = "metrics", decimals: int = 4) -> str:
    # headers may wrap after underscores, so the wide table fits a laptop screen
    head = "".join(f"<th>{html.escape(c).replace('_', '_&#8203;')}</th>" for c in results.columns)
    rows = []
    for r in results.iter_rows(named=True):
        cells = []
        for col, value in r.items():
            cls = ""
            if col.startswith("Skill_MAE_vs_") and value is not None:
                cls = ' class="pos"' if value > 0.0005 else (' class="neg"' if value < -0.0005 else "")
            text = f"{value:,.{decimals}f}" if isinstance(value, float) else html.escape(str(value))
            cells.append(f"<td{cls}>{text}</td>")
        rows.append(f'<tr{" class=chosen" if r.get("Escolhido") else ""}>{"".join(cells)}</tr>')
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _fan(ax, past: pl.DataFrame, ahead: pl.DataFrame, title: str, fontsize: int = 10) -> None:
    """History (census totals) then the forecast years with their 95 % and 80 % bands."""
    past = past.sort("NU_ANO_CENSO").tail(HISTORY_YEARS)
    ahead = ahead.sort(HORIZON)
    years = ahead["NU_ANO_CENSO"].to_list()
    if past.height:  # the bands start from the last census year, where the forecast starts
        anchor_year, anchor = past["NU_ANO_CENSO"][-1], past["matriculas"][-1]
    else:
        anchor_year, anchor = None, None
    joined = ([anchor_year] if anchor_year is not None else []) + years
    start = [anchor] if anchor is not None else []
    for level, colour in BANDS:  # a horizon never validated has no bounds: a gap in the band
        lo, hi = (start + ahead[f"limite_{side}_{level}"].cast(pl.Float64).fill_null(float("nan")).to_list()
                  for side in ("inferior", "superior"))
        ax.fill_between(joined, lo, hi, color=colour, label=f"{level}%", linewidth=0)
    ax.plot(past["NU_ANO_CENSO"], past["matriculas"], "o-", color="#1d2330", markersize=3, label="census")
    ax.plot(joined, ([anchor] if anchor is not None else []) + ahead[FORECAST].to_list(), "o--", color="#1f4e8c",
            markersize=3, label="forecast")
    ax.set_title(title, fontsize=fontsize)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="y", style="plain")


def _forecast_years(out: Path, meta: dict) -> list[int]:
    years = meta.get("forecast_years") or ([meta["forecast_year"]] if meta.get("forecast_year") else [])
    return [y for y in years if (out / outputs.forecast_file(y, "brasil")).exists()]


def _areas(out: Path, years: list[int], level: str) -> pl.DataFrame:
    """The forecast files of one area level for every forecast year, with the year as a column."""
    numbers = {f"limite_{side}_{pct}": pl.Float64 for side in ("inferior", "superior") for pct in (80, 95)}
    return pl.concat([pl.read_csv(out / outputs.forecast_file(y, level), schema_overrides=numbers)
                      .with_columns(pl.lit(y).alias("NU_ANO_CENSO")) for y in years], how="diagonal")


def fan_chart(history: pl.DataFrame, country: pl.DataFrame, flag: str) -> bytes:
    """The country's path for one stage: census years, then the forecast with 80/95 % bands."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    _fan(ax, history.filter((pl.col("etapa") == flag) & (pl.col("SG_UF") == "BR")), country.filter(pl.col("etapa") == flag),
         f"{flag}: Brazil, students")
    ax.legend(fontsize=7, loc="best")
    return _figure_png(fig)


def state_fans(history: pl.DataFrame, states: pl.DataFrame, flag: str) -> bytes:
    """Each state's path for one stage, small multiples in one picture."""
    ufs = states.filter(pl.col("etapa") == flag).select("CO_UF", "SG_UF").unique().sort("CO_UF")
    columns = 6
    rows = max(1, -(-ufs.height // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(12, 1.9 * rows), squeeze=False)
    for ax, (code, abbr) in zip(axes.flat, ufs.iter_rows()):
        _fan(ax, history.filter((pl.col("etapa") == flag) & (pl.col("CO_UF") == code)),
             states.filter((pl.col("etapa") == flag) & (pl.col("CO_UF") == code)), abbr, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[ufs.height:]:
        ax.axis("off")
    fig.suptitle(f"{flag}: each state's census enrollment and forecast (80/95 % bands)", fontsize=10)
    fig.tight_layout()
    return _figure_png(fig, dpi=72)  # 27 small panels: legible at screen resolution, a third of the bytes


def horizon_table(results: pl.DataFrame) -> pl.DataFrame:
    """Per stage and horizon: MAE and state-total error of the chosen model, Persistencia and Coorte."""
    chosen = results.filter(pl.col("Escolhido")).select("etapa", HORIZON, pl.col("modelo").alias("escolhido"))
    wide = chosen
    for label, pick in (("escolhido", None), ("Persistencia", PERSISTENCE), ("Coorte", COHORT)):
        rows = (results.join(chosen, on=["etapa", HORIZON]).filter(pl.col("modelo") == pl.col("escolhido"))
                if pick is None else results.filter(pl.col("modelo") == pick))
        wide = wide.join(rows.select("etapa", HORIZON, pl.col("MAE_Media_CV").alias(f"MAE_{label}"),
                                     pl.col("APE_UFs_Media_CV").alias(f"APE_UFs_{label}")), on=["etapa", HORIZON], how="left")
    return wide.sort("etapa", HORIZON, maintain_order=True)


def horizon_plot(table: pl.DataFrame, flag: str) -> bytes:
    """MAE by years ahead: the chosen model against Persistencia and Coorte."""
    rows = table.filter(pl.col("etapa") == flag).sort(HORIZON)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, style in (("escolhido", "o-"), ("Persistencia", "s--"), ("Coorte", "^:")):
        ax.plot(rows[HORIZON], rows[f"MAE_{label}"], style, label="chosen" if label == "escolhido" else label)
    ax.set_xticks(rows[HORIZON].to_list())
    ax.set_xlabel("years ahead")
    ax.set_ylabel("MAE (students per school)")
    ax.set_title(f"{flag}: error by horizon (walk-forward)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure_png(fig)


def totals_plot(totals: pl.DataFrame, flag: str, chosen: str) -> bytes:
    """Actual stage totals per test year against persistence's and the chosen model's (one year ahead)."""
    totals = totals.filter(pl.col(HORIZON) == 1) if HORIZON in totals.columns else totals
    shown = [PERSISTENCE] if chosen == PERSISTENCE else [PERSISTENCE, chosen]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    actual = totals.filter(pl.col("modelo") == PERSISTENCE).sort("NU_ANO_CENSO")
    ax.plot(actual["NU_ANO_CENSO"], actual["real"], "o-", color="#1d2330", label="actual")
    for m, style in zip(shown, ("s--", "^-")):
        rows = totals.filter(pl.col("modelo") == m).sort("NU_ANO_CENSO")
        ax.plot(rows["NU_ANO_CENSO"], rows["previsao"], style, label=m)
    ax.set_title(f"{flag}: total enrollment, actual vs forecast", fontsize=10)
    ax.set_xlabel("test year")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_png(fig)


def error_by_size_plot(errors: pl.DataFrame, flag: str) -> bytes:
    """MAE per size bin of last year's enrollment, one year ahead, as the run wrote it (erro_por_tamanho_cv.csv)."""
    errors = errors.filter(pl.col(HORIZON) == 1) if HORIZON in errors.columns else errors
    shown = [m for m in errors["modelo"].unique(maintain_order=True) if m != DRIFT]
    bins = errors.select("faixa", "faixa_tamanho", "n").unique("faixa").sort("faixa")
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    width = 0.8 / max(len(shown), 1)
    for i, m in enumerate(shown):
        mae = bins.join(errors.filter(pl.col("modelo") == m), on="faixa", how="left")["MAE"]
        ax.bar([x + i * width for x in range(bins.height)], mae, width=width, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(bins.height)],
                  [f"{s}\n(n={n})" for s, n in zip(bins["faixa_tamanho"], bins["n"])], fontsize=7)
    ax.set_ylabel("MAE (students)")
    ax.set_title(f"{flag}: error by school size (last year's enrollment)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def _metadata(meta: dict) -> str:
    items = {
        "years": ", ".join(str(y) for y in meta.get("years", [])),
        "stages": ", ".join(meta.get("stages", [])),
        "device": meta.get("device", ""),
        "started (UTC)": meta.get("started_utc", ""),
        "total time": f"{meta.get('timings_s', {}).get('total', 0):.0f} s",
        "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if k not in ("platform",)),
    }
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in meta.get("timings_s", {}).items() if k != "total")
    items["durations"] = timings
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items()) + "</dl>"


def _forecast_summary(out: Path, meta: dict) -> str:
    years = _forecast_years(out, meta)
    if not years:
        return ""
    bounds = ["limite_inferior_95", "limite_inferior_80", FORECAST, "limite_superior_80", "limite_superior_95"]
    country = _areas(out, years, "brasil")
    table = country.select("etapa", "NU_ANO_CENSO", LAST_ENROLLMENT, "previsao_escolas", "ajuste_agregacao",
                           "previsao_novas_ofertas", *bounds).sort("etapa", "NU_ANO_CENSO", maintain_order=True)
    states = _areas(out, years, "ufs")
    parts = [
        f"<section id='forecast-section'><h2>Forecast for {years[0]}" + (f"-{years[-1]}" if len(years) > 1 else "") + "</h2>",
        "<p class='muted'>Students. A total is the sum of the school forecasts, plus the expected net effect of "
        "closures and stage drops on that sum (ajuste_agregacao), plus the enrollment expected in offerings that "
        "will open; bounds are 80% and 95% intervals from the same resampled residuals, calibrated at each "
        "horizon, so they widen with it.</p>",
        metrics_table(table, "forecast", decimals=0),
    ]
    history_path = out / outputs.HISTORY
    if history_path.exists():
        history = pl.read_csv(history_path)
        parts.append("<h3>Paths: census years, then the forecast with its 80% and 95% bands</h3><div class='grid'>")
        parts += [_img(fan_chart(history, country, flag), f"{flag} fan chart") for flag in country["etapa"].unique(maintain_order=True)]
        parts.append("</div><details><summary>Each state's path</summary>")
        parts += [_img(state_fans(history, states, flag), f"{flag} states") for flag in states["etapa"].unique(maintain_order=True)]
        parts.append("</details>")
    state_table = states.select("etapa", "NU_ANO_CENSO", "SG_UF", LAST_ENROLLMENT, *bounds).sort("etapa", "NU_ANO_CENSO", "SG_UF")
    parts.append(f"<details><summary>By state</summary>{metrics_table(state_table, 'forecast-states', decimals=0)}</details></section>")
    return "".join(parts)


def _horizons_section(results: pl.DataFrame) -> str:
    if HORIZON not in results.columns:
        return ""
    table = horizon_table(results)
    plots = "".join(_img(horizon_plot(table, flag), f"{flag} error by horizon") for flag in table["etapa"].unique(maintain_order=True))
    return ("<section id='horizons-section'><h2>Error by horizon</h2><p class='muted'>Walk-forward: the forecast of year Y "
            "h years ahead was made from census year Y - h with models that saw nothing after it. MAE in students "
            "per school; APE_UFs: mean absolute percentage error of state totals.</p>"
            f"{metrics_table(table, 'horizons', decimals=3)}<div class='grid'>{plots}</div></section>")


class DamagedOutput(Exception):
    """An output the report would read is not the file the run wrote; the message names it."""


def _run_record(out: Path) -> dict:
    path = out / outputs.METADATA
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedOutput(f"{path} is damaged ({exc}); rerun `censo-forecast run --out {out}`") from None
    if not isinstance(meta, dict):
        raise DamagedOutput(f"{path} is damaged (not a JSON object); rerun `censo-forecast run --out {out}`")
    return meta


def _verify(out: Path, meta: dict) -> None:
    """Refuse outputs that are not the files the run wrote (their sha256 in the run record)."""
    recorded = meta.get("outputs_sha256")
    for name, expected in (recorded.items() if isinstance(recorded, dict) else ()):
        path = out / str(name)
        if path.exists() and storage.sha256(path) != expected:
            raise DamagedOutput(f"{path} is not the file the run wrote (its sha256 differs): the report would show "
                                f"other numbers; rerun `censo-forecast run --out {out}`")


def build_report(out: Path) -> Path:
    """Write OUT/report.html from the outputs already in OUT, after checking they are the run's."""
    out = Path(out)
    needed = [out / name for name in (outputs.RESULTS, outputs.CV_TOTALS, outputs.ERROR_BY_SIZE)]
    for path in needed:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `censo-forecast run --out {out}` first")
    meta = _run_record(out)
    _verify(out, meta)
    results, totals, errors = (pl.read_csv(path) for path in needed)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>censo-forecast report</title><style>{_CSS}</style></head><body><main>",
        "<h1>School enrollment forecast: validation report</h1>",
        "<p class='muted'>Walk-forward by calendar year; every school that offered the stage the year before is "
        "forecast, closures included (truth 0). Skill = 1 - MAE / MAE(baseline) against persistence and against cohort progression (Coorte); green beats the baseline.</p>",
        f"<section><h2>Run</h2>{_metadata(meta)}</section>",
        _forecast_summary(out, meta),
        _horizons_section(results),
        f"<section id='metrics-section'><h2>Metrics (resultados_finais.csv)</h2>{metrics_table(results)}</section>",
    ]
    one_year = results.filter(pl.col(HORIZON) == 1) if HORIZON in results.columns else results
    chosen = dict(one_year.filter(pl.col("Escolhido")).select("etapa", "modelo").iter_rows()) if "Escolhido" in results.columns else {}
    for flag in results["etapa"].unique(maintain_order=True):
        label = catalog.stage(flag).label
        parts.append(f"<section id='stage-{flag}'><h2>{html.escape(flag)}: {html.escape(label)}</h2><div class='grid'>")
        parts.append(_img(totals_plot(totals.filter(pl.col("etapa") == flag), flag, chosen.get(flag, ENSEMBLE)),
                          f"{flag} totals by test year"))
        parts.append(_img(error_by_size_plot(errors.filter(pl.col("etapa") == flag), flag), f"{flag} error by school size"))
        parts.append("</div>")
        shap_pngs = sorted((out / outputs.SHAP).glob(outputs.shap_png("*", flag, "*")))
        if shap_pngs:
            parts.append("<h3>What drives the forecast (SHAP, last walk-forward origin, every horizon)</h3><div class='grid'>")
            parts += [_img(p.read_bytes(), p.stem) for p in shap_pngs]
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    target = out / outputs.REPORT
    atomic.write_text(target, "\n".join(parts))
    return target
