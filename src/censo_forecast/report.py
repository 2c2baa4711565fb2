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
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from censo_forecast import atomic  # noqa: E402
from censo_forecast.inep import catalog  # noqa: E402
from censo_forecast.models import ENSEMBLE, LEARNERS  # noqa: E402

REPORT = "report.html"
SIZE_BINS = [0, 20, 50, 100, 200, 500]
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


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
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
            if col == "Skill_MAE_vs_Persistencia" and value is not None:
                cls = ' class="pos"' if value > 0.0005 else (' class="neg"' if value < -0.0005 else "")
            text = f"{value:,.{decimals}f}" if isinstance(value, float) else html.escape(str(value))
            cells.append(f"<td{cls}>{text}</td>")
        rows.append(f'<tr{" class=chosen" if r.get("Escolhido") else ""}>{"".join(cells)}</tr>')
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def totals_plot(preds: pl.DataFrame, flag: str, chosen: str) -> bytes:
    models = ["Persistencia", chosen] if chosen != "Persistencia" else ["Persistencia"]
    totals = preds.group_by("NU_ANO_CENSO").agg(pl.col("y_true").sum(), *(pl.col(m).sum() for m in models)).sort("NU_ANO_CENSO")
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(totals["NU_ANO_CENSO"], totals["y_true"], "o-", color="#1d2330", label="actual")
    for m, style in zip(models, ("s--", "^-")):
        ax.plot(totals["NU_ANO_CENSO"], totals[m], style, label=m)
    ax.set_title(f"{flag}: total enrollment, actual vs forecast", fontsize=10)
    ax.set_xlabel("test year")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_png(fig)


def error_by_size_plot(preds: pl.DataFrame, flag: str) -> bytes:
    """MAE per size bin of last year's enrollment (= the persistence forecast)."""
    labels = [f"{a}-{b}" for a, b in zip(SIZE_BINS, SIZE_BINS[1:])] + [f"{SIZE_BINS[-1]}+"]
    index = np.searchsorted(np.asarray(SIZE_BINS[1:]), preds["Persistencia"].to_numpy(), side="right")
    binned = preds.with_columns(pl.Series("size", np.asarray(labels)[index]))
    models = [m for m in ("Persistencia", *LEARNERS, ENSEMBLE) if m in preds.columns]
    table = binned.group_by("size").agg(*((pl.col(m) - pl.col("y_true")).abs().mean().alias(m) for m in models), pl.len())
    table = table.sort(pl.col("size").replace_strict(labels, list(range(len(labels)))))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        ax.bar([x + i * width for x in range(table.height)], table[m], width=width, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(table.height)], [f"{s}\n(n={n})" for s, n in zip(table["size"], table["len"])], fontsize=7)
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


def _forecast_summary(out: Path) -> str:
    files = sorted(out.glob("previsoes_*_brasil.csv"))
    if not files:
        return ""
    year = files[-1].name.split("_")[1]
    bounds = ["limite_inferior_95", "limite_inferior_80", "previsao", "limite_superior_80", "limite_superior_95"]
    country = pl.read_csv(files[-1]).select("etapa", "matriculas_ultimo_ano", "previsao_escolas", "ajuste_agregacao",
                                            "previsao_novas_ofertas", *bounds)
    states = pl.read_csv(out / f"previsoes_{year}_ufs.csv").select("etapa", "SG_UF", "matriculas_ultimo_ano", *bounds)
    return (
        f"<section><h2>Forecast for {html.escape(year)}</h2>"
        "<p class='muted'>Students. A total is the sum of the school forecasts, plus the expected net effect of "
        "closures and stage drops on that sum (ajuste_agregacao), plus the enrollment expected in offerings that "
        "will open; bounds are 80% and 95% intervals from the same resampled residuals.</p>"
        f"{metrics_table(country, 'forecast', decimals=0)}"
        f"<details><summary>By state</summary>{metrics_table(states, 'forecast-states', decimals=0)}</details></section>"
    )


def build_report(out: Path) -> Path:
    """Write OUT/report.html from the outputs already in OUT."""
    out = Path(out)
    results_path = out / "resultados_finais.csv"
    if not results_path.exists():
        raise FileNotFoundError(f"{results_path} not found: run `censo-forecast run --out {out}` first")
    results = pl.read_csv(results_path)
    preds = pl.read_parquet(out / "cv_predictions.parquet")
    meta = json.loads((out / "run_metadata.json").read_text()) if (out / "run_metadata.json").exists() else {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>censo-forecast report</title><style>{_CSS}</style></head><body><main>",
        "<h1>School enrollment forecast: validation report</h1>",
        "<p class='muted'>Walk-forward by calendar year; every school that offered the stage the year before is "
        "forecast, closures included (truth 0). Skill = 1 - MAE / MAE(persistence); green beats persistence.</p>",
        f"<section><h2>Run</h2>{_metadata(meta)}</section>",
        f"<section><h2>Metrics (resultados_finais.csv)</h2>{metrics_table(results)}</section>",
        _forecast_summary(out),
    ]
    chosen = dict(results.filter(pl.col("Escolhido")).select("etapa", "modelo").iter_rows()) if "Escolhido" in results.columns else {}
    for flag in results["etapa"].unique(maintain_order=True):
        stage_preds = preds.filter(pl.col("etapa") == flag)
        label = catalog.stage(flag).label
        parts.append(f"<section id='stage-{flag}'><h2>{html.escape(flag)}: {html.escape(label)}</h2><div class='grid'>")
        parts.append(_img(totals_plot(stage_preds, flag, chosen.get(flag, ENSEMBLE)), f"{flag} totals by test year"))
        parts.append(_img(error_by_size_plot(stage_preds, flag), f"{flag} error by school size"))
        parts.append("</div>")
        shap_pngs = sorted((out / "shap").glob(f"SHAP_*_{flag}_*.png"))
        if shap_pngs:
            parts.append("<h3>What drives the forecast (SHAP, last test year)</h3><div class='grid'>")
            parts += [_img(p.read_bytes(), p.stem) for p in shap_pngs]
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    target = out / REPORT
    atomic.write_text(target, "\n".join(parts))
    return target
