"""The report's pictures: matplotlib PNGs (stored with a 128-colour palette, a third of the
bytes, so a national report stays small) and inline SVG sparklines.
"""

from __future__ import annotations

import io

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image  # a matplotlib dependency

from censo_forecast.inep.catalog import YEAR
from censo_forecast.outputs import (
    ACTUAL_TOTAL,
    COHORT,
    DRIFT,
    ENROLLMENT,
    FORECAST,
    HORIZON,
    MAE,
    MODEL,
    PERSISTENCE,
    ROWS,
    SIZE_BIN,
    SIZE_LABEL,
    SKILL_VS_COHORT,
    SKILL_VS_PERSISTENCE,
    STAGE,
    bound,
)
from censo_forecast.report.data import at

BANDS = ((95, "#c9d9ee"), (80, "#8fb1db"))  # interval level, fill colour: the fan
HISTORY_YEARS = 8  # census years drawn before the forecast
PALETTE_COLOURS = 128


def compact_png(data: bytes) -> bytes:
    """A PNG re-encoded with a palette: charts and SHAP plots have few colours, and the page
    inlines dozens of them."""
    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=PALETTE_COLOURS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue() if buffer.tell() < len(data) else data


def subplots(rows: int = 1, columns: int = 1, **kwargs):
    """(figure, axes) drawn without pyplot: no backend is chosen or changed for the user's process."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(rows, columns, **kwargs)


def figure_png(fig, dpi: int = 100, tight: bool = True) -> bytes:
    """tight: crop to the drawn area (one more layout pass; small multiples set their margins instead)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return compact_png(buffer.getvalue())


def _thousands(words):
    return FuncFormatter(lambda v, _pos: words.integer(v))


def _fan(ax, past: pl.DataFrame, ahead: pl.DataFrame, title: str, words, fontsize: int = 10) -> None:
    """History (census totals) then the forecast years with their 95 % and 80 % bands."""
    past = past.sort(YEAR).tail(HISTORY_YEARS)
    ahead = ahead.sort(HORIZON)
    years = ahead[YEAR].to_list()
    anchor = [past[ENROLLMENT][-1]] if past.height else []  # the bands start where the census ends
    joined = ([past[YEAR][-1]] if past.height else []) + years
    for level, colour in BANDS:  # a horizon never validated has no bounds: a gap in the band
        low, high = (anchor + ahead[bound(side, level)].cast(pl.Float64).fill_null(float("nan")).to_list()
                     for side in ("inferior", "superior"))
        ax.fill_between(joined, low, high, color=colour, label=f"{level} %", linewidth=0)
    ax.plot(past[YEAR], past[ENROLLMENT], "o-", color="#1d2330", markersize=3, label=words("census_line"))
    ax.plot(joined, anchor + ahead[FORECAST].to_list(), "o--", color="#1f4e8c", markersize=3, label=words("forecast_line"))
    ax.set_title(title, fontsize=fontsize)
    ax.grid(alpha=0.3)
    ax.yaxis.set_major_formatter(_thousands(words))


def fan_chart(history: pl.DataFrame, country: pl.DataFrame, flag: str, words) -> bytes:
    """The country's (or covered area's) path for one stage."""
    fig, ax = subplots(figsize=(5.5, 3.2))
    _fan(ax, history.filter((pl.col(STAGE) == flag) & (pl.col("SG_UF") == "BR")), country.filter(pl.col(STAGE) == flag),
         words.stage(flag), words)
    ax.set_ylabel(words("students"))
    ax.legend(fontsize=7, loc="best")
    return figure_png(fig)


def state_fans(history: pl.DataFrame, states: pl.DataFrame, flag: str, words) -> bytes:
    """Each state's path for one stage, small multiples in one picture."""
    ufs = states.filter(pl.col(STAGE) == flag).select("CO_UF", "SG_UF").unique().sort("CO_UF")
    columns = 6
    rows = max(1, -(-ufs.height // columns))
    fig, axes = subplots(rows, columns, figsize=(12, 1.9 * rows), squeeze=False)
    for ax, (code, abbr) in zip(axes.flat, ufs.iter_rows(), strict=False):
        _fan(ax, history.filter((pl.col(STAGE) == flag) & (pl.col("CO_UF") == code)),
             states.filter((pl.col(STAGE) == flag) & (pl.col("CO_UF") == code)), abbr, words, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[ufs.height:]:
        ax.axis("off")
    fig.suptitle(words("state_fans_title", stage=words.stage(flag)), fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.04, top=1 - 0.45 / (1.9 * rows), wspace=0.38, hspace=0.55)
    return figure_png(fig, dpi=72, tight=False)  # 27 small panels: legible at screen resolution, a third of the bytes


def skill_chart(quality: pl.DataFrame, horizons: list[int], words) -> bytes:
    """The one chart of "how good": per stage, how much the chosen model cuts the error of
    Persistencia and of Coorte, one year ahead and at the last horizon."""
    stages = quality[STAGE].to_list()
    skill = {PERSISTENCE: SKILL_VS_PERSISTENCE, COHORT: SKILL_VS_COHORT}
    series = [(base, h) for h in horizons for base in (PERSISTENCE, COHORT) if at(skill[base], h) in quality.columns]
    colours = {(PERSISTENCE, horizons[0]): "#1f4e8c", (COHORT, horizons[0]): "#8fb1db",
               (PERSISTENCE, horizons[-1]): "#b5651d", (COHORT, horizons[-1]): "#e8b07a"}
    fig, ax = subplots(figsize=(7.5, 0.5 + 0.55 * len(stages)))
    height = 0.8 / max(len(series), 1)
    for i, (base, h) in enumerate(series):
        values = [100 * (v or 0.0) for v in quality[at(skill[base], h)].to_list()]
        ax.barh([s + i * height for s in range(len(stages))], values, height=height, color=colours.get((base, h)),
                label=words("skill_vs", baseline=base, h=h))
    ax.set_yticks([s + 0.4 - height / 2 for s in range(len(stages))], [words.stage(f) for f in stages], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#1d2330", linewidth=0.8)
    ax.set_xlabel(words("skill_chart"))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return figure_png(fig)


def horizon_plot(table: pl.DataFrame, flag: str, words) -> bytes:
    """MAE by years ahead: the chosen model against Persistencia and Coorte."""
    rows = table.filter(pl.col(STAGE) == flag).sort(HORIZON)
    fig, ax = subplots(figsize=(5.5, 3.2))
    for label, style in (("escolhido", "o-"), (PERSISTENCE, "s--"), (COHORT, "^:")):
        ax.plot(rows[HORIZON], rows[f"MAE_{label}"], style, label=words("chosen") if label == "escolhido" else label)
    ax.set_xticks(rows[HORIZON].to_list())
    ax.set_xlabel(words("years_ahead"))
    ax.set_ylabel(words("mae_axis"))
    ax.set_title(words("horizon_title", stage=words.stage(flag)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure_png(fig)


def totals_plot(totals: pl.DataFrame, flag: str, chosen: str, words) -> bytes:
    """Actual stage totals per test year against persistence's and the chosen model's (one year ahead)."""
    totals = totals.filter(pl.col(HORIZON) == 1) if HORIZON in totals.columns else totals
    shown = [PERSISTENCE] if chosen == PERSISTENCE else [PERSISTENCE, chosen]
    fig, ax = subplots(figsize=(5.5, 3.2))
    actual = totals.filter(pl.col(MODEL) == PERSISTENCE).sort(YEAR)
    ax.plot(actual[YEAR], actual[ACTUAL_TOTAL], "o-", color="#1d2330", label=words("actual"))
    for m, style in zip(shown, ("s--", "^-"), strict=False):
        rows = totals.filter(pl.col(MODEL) == m).sort(YEAR)
        ax.plot(rows[YEAR], rows[FORECAST], style, label=m)
    ax.set_title(words("totals_title", stage=words.stage(flag)), fontsize=10)
    ax.set_xlabel(words("test_year"))
    ax.yaxis.set_major_formatter(_thousands(words))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def error_by_size_plot(errors: pl.DataFrame, flag: str, words) -> bytes:
    """MAE per size bin of last year's enrollment, one year ahead (erro_por_tamanho_cv.csv)."""
    errors = errors.filter(pl.col(HORIZON) == 1) if HORIZON in errors.columns else errors
    shown = [m for m in errors[MODEL].unique(maintain_order=True) if m != DRIFT]
    bins = errors.select(SIZE_BIN, SIZE_LABEL, ROWS).unique(SIZE_BIN).sort(SIZE_BIN)
    fig, ax = subplots(figsize=(5.5, 3.2))
    width = 0.8 / max(len(shown), 1)
    for i, m in enumerate(shown):
        mae = bins.join(errors.filter(pl.col(MODEL) == m), on=SIZE_BIN, how="left")[MAE]
        ax.bar([x + i * width for x in range(bins.height)], mae, width=width, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(bins.height)],
                  [f"{s}\n(n={words.integer(n)})" for s, n in zip(bins[SIZE_LABEL], bins[ROWS], strict=True)], fontsize=7)
    ax.set_ylabel(words("mae_axis"))
    ax.set_title(words("size_title", stage=words.stage(flag)), fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def sparkline(past_years: list[int], past: list[float], years: list[int], forecast: list[float],
              low: list, high: list, width: int = 150, height: int = 40) -> str:
    """A small inline SVG: the census path, then the forecast with its 80 % band."""
    xs = list(past_years) + list(years)
    bounds = [v for v in (*past, *forecast, *low, *high) if v is not None]
    if not xs or not bounds:
        return ""
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(bounds), max(bounds)
    span_x, span_y = (x1 - x0) or 1, (y1 - y0) or 1

    def point(x, y):
        return f"{2 + (width - 4) * (x - x0) / span_x:.1f},{height - 2 - (height - 4) * (y - y0) / span_y:.1f}"

    start = [(past_years[-1], past[-1])] if past else []
    band = ""
    if all(v is not None for v in (*low, *high)) and low:
        ring = start + list(zip(years, high, strict=True)) + list(zip(reversed(years), reversed(low), strict=True)) + start
        band = f'<polygon points="{" ".join(point(x, y) for x, y in ring)}" fill="#8fb1db" opacity="0.7"/>'
    census = " ".join(point(x, y) for x, y in zip(past_years, past, strict=True))
    ahead = " ".join(point(x, y) for x, y in start + list(zip(years, forecast, strict=True)))
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-hidden="true">'
            f'{band}<polyline points="{census}" fill="none" stroke="#1d2330" stroke-width="1.5"/>'
            f'<polyline points="{ahead}" fill="none" stroke="#1f4e8c" stroke-width="1.5" stroke-dasharray="3,2"/></svg>')
