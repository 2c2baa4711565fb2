"""report.html for a planner: how many students per stage first, then where it grows or
shrinks, a search for each municipality, how good the forecast is, and the analyst's tables
collapsed at the end. One self-contained file (images, data and script inlined, no request
to any host), in Brazilian Portuguese by default.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import polars as pl

from censo_forecast import atomic, config, outputs
from censo_forecast.inep.catalog import SCHOOL, YEAR
from censo_forecast.outputs import (
    APE_STATES,
    BIRTHS_ADJUSTMENT,
    CHOSEN,
    COHORT,
    COVERAGE_80_MEAN,
    COVERAGE_95_MEAN,
    ENSEMBLE,
    FORECAST,
    HORIZON,
    LAST_ENROLLMENT,
    LOWER_80,
    LOWER_95,
    MAE_MEAN,
    MODEL,
    NEW_OFFERINGS_FORECAST,
    PERSISTENCE,
    SCHOOLS_FORECAST,
    SKILL_OF_CHOICE,
    SKILL_VS_COHORT,
    SKILL_VS_PERSISTENCE,
    STAGE,
    UPPER_80,
    UPPER_95,
)
from censo_forecast.report import charts, choropleth, data
from censo_forecast.report.data import DamagedOutput
from censo_forecast.report.i18n import TILES, Words

__all__ = ["build_report", "DamagedOutput"]


def _asset(name: str) -> str:
    return resources.files("censo_forecast.report").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _json_block(payload, css_class: str = "", element_id: str = "") -> str:
    """Data for the script; '</' is escaped so no value can close the script element."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    attrs = (f' class="{css_class}"' if css_class else "") + (f' id="{element_id}"' if element_id else "")
    return f'<script type="application/json"{attrs}>{text}</script>'


def metrics_table(frame: pl.DataFrame, words: Words, table_id: str, decimals: int = 4) -> str:
    """Any table as the CSV has it (column names untranslated), numbers in the reader's format."""
    head = "".join(f"<th>{html.escape(c).replace('_', '_&#8203;')}</th>" for c in frame.columns)
    rows = []
    for r in frame.iter_rows(named=True):
        cells = []
        for col, value in r.items():
            cls = ""
            if col in (SKILL_VS_PERSISTENCE, SKILL_VS_COHORT) and value is not None:
                cls = ' class="pos"' if value > 0.0005 else (' class="neg"' if value < -0.0005 else "")
            text = words.number(value, decimals) if isinstance(value, float) else html.escape("" if value is None else str(value))
            cells.append(f"<td{cls}>{text}</td>")
        rows.append(f'<tr{" class=chosen" if r.get(CHOSEN) else ""}>{"".join(cells)}</tr>')
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _change_cell(words: Words, change, fraction) -> str:
    css = "up" if (change or 0) > 0 else ("down" if (change or 0) < 0 else "")
    sign = "+" if (change or 0) > 0 else ""
    return f'<td class="num {css}"><span class="big">{sign}{words.integer(change)}</span><small>{words.percent(fraction)}</small></td>'


def headline_section(rows: list[dict], area: str, words: Words) -> str:
    years = rows[0]["years"]
    last_year = years[0] - 1
    head = (f"<th>{words('stage')}</th><th>{words('path')}</th><th>{words('census', year=last_year)}</th>"
            + "".join(f"<th>{y}</th>" for y in years) + f"<th>{words('change', year=years[-1])}</th>")
    body = []
    for r in rows:
        recent = slice(-charts.HISTORY_YEARS, None)
        path = charts.sparkline(r["past_years"][recent], r["past"][recent], years, r["forecast"], r["low"], r["high"], width=110)
        cells = [
            f'<td class="stage">{html.escape(words.stage(r["flag"]))}</td>',
            f"<td>{path}</td>",
            f'<td class="num"><span class="big">{words.integer(r["last"])}</span></td>',
        ]
        for value, low, high in zip(r["forecast"], r["low"], r["high"], strict=True):
            band = (words("range80", low=words.integer(low), high=words.integer(high)) if low is not None and high is not None
                    else words("unbounded"))
            cells.append(f'<td class="num"><span class="big">{words.integer(value)}</span><small>{band}</small></td>')
        change = r["forecast"][-1] - r["last"]
        cells.append(_change_cell(words, change, change / r["last"] if r["last"] else None))
        body.append(f'<tr data-stage="{r["flag"]}">{"".join(cells)}</tr>')
    return (
        "<section id='headline-section'>"
        f"<h2>{html.escape(words('headline', area=area))}</h2>"
        f"<p class='muted'>{html.escape(words('headline_note', year=years[-1]))}</p>"
        f"<div class='scroll'><table id='headline'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _stage_options(flags, words: Words, selected: str | None = None, everything: str | None = None, values=None) -> str:
    values = list(values) if values is not None else list(flags)
    options = [f'<option value="">{html.escape(everything)}</option>'] if everything else []
    options += [f'<option value="{v}"{" selected" if f == selected else ""}>{html.escape(words.stage(f))}</option>'
                for f, v in zip(flags, values, strict=True)]
    return "".join(options)


def tile_map(states: pl.DataFrame, years: list[int], words: Words) -> str:
    """The 27 states as squares in their approximate places, coloured by the forecast change."""
    values = data.state_map(states, words)
    flags = list(values)
    stage, year = flags[0], str(years[-1])
    current = values[stage].get(year, {})
    tiles = []
    for uf, (row, column) in TILES.items():
        shown = current.get(uf)
        tiles.append(f'<div class="tile" data-uf="{uf}" style="grid-row:{row + 1};grid-column:{column + 1}"><b>{uf}</b>'
                     f'<span class="change">{shown[1] if shown else words("no_data")}</span>'
                     f'<span class="students">{shown[0] if shown else ""}</span></div>')
    year_options = "".join(f'<option value="{y}"{" selected" if str(y) == year else ""}>{y}</option>' for y in years)
    return ("<div class='tilemap-block' id='state-map'>"
            f"<h3>{words('map')}</h3><p class='muted'>{html.escape(words('map_note'))}</p>"
            f"<div class='controls'><select class='map-stage' aria-label='{words('stage')}'>{_stage_options(flags, words, stage)}</select>"
            f"<select class='map-year' aria-label='{words('year')}'>{year_options}</select></div>"
            f"<div class='tilemap'>{''.join(tiles)}</div>{_json_block(values, 'map-data')}</div>")


def _movers_table(frame: pl.DataFrame, label, words: Words, year: int, census_year: int) -> str:
    head = (f"<th>{label[0]}</th><th>{words('census', year=census_year)}</th>"
            f"<th>{words('forecast_in', year=year)}</th><th>{words('students_change')}</th>")
    rows = []
    for r in frame.iter_rows(named=True):
        band = words("range80", low=words.integer(r[LOWER_80]), high=words.integer(r[UPPER_80])) \
            if r[LOWER_80] is not None else ""
        name, where = label[1](r)
        rows.append(
            f"<tr><td>{html.escape(name)}<small class='who'>{html.escape(where)}</small></td><td>{words.integer(r[LAST_ENROLLMENT])}</td>"
            f"<td>{words.integer(r[FORECAST])}<small>{band}</small></td>{_change_cell(words, r['change'], r['change_pct'])}</tr>"
        )
    if not rows:
        rows.append(f"<tr><td colspan='4' class='muted'>{words('none')}</td></tr>")
    return f"<table class='movers-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def movers_section(munis: pl.DataFrame, school_rows: pl.DataFrame, year: int, census_year: int, words: Words) -> str:
    """The ten municipalities and schools with the largest expected growth and decline per stage."""
    names = (
        dict(zip(munis["CO_MUNICIPIO"].to_list(), munis["NO_MUNICIPIO"].to_list(), strict=True)) if "NO_MUNICIPIO" in munis.columns else {}
    )
    ufs = dict(zip(munis["CO_MUNICIPIO"].to_list(), munis["SG_UF"].to_list(), strict=True)) if "SG_UF" in munis.columns else {}

    def place(code) -> str:
        return f"{names.get(code) or code}/{ufs.get(code) or ''}"

    muni_label = (words("municipality"), lambda r: (place(r["CO_MUNICIPIO"]), str(r["CO_MUNICIPIO"])))
    school_label = (words("school"), lambda r: (r["NO_ENTIDADE"] or str(r[SCHOOL]), f"{r[SCHOOL]} · {place(r['CO_MUNICIPIO'])}"))
    by_muni = data.movers(munis.filter(pl.col(YEAR) == year))
    by_school = data.movers(school_rows) if school_rows.height else {}
    flags = list(by_muni)
    blocks = []
    for flag in flags:
        parts = []
        for kind, label, lists in ((words("municipalities"), muni_label, by_muni), (words("schools"), school_label, by_school)):
            if flag not in lists:
                continue
            growth, decline = lists[flag]
            parts.append(f"<div><h4>{kind}: {words('growth')}</h4>{_movers_table(growth, label, words, year, census_year)}</div>"
                         f"<div><h4>{kind}: {words('decline')}</h4>{_movers_table(decline, label, words, year, census_year)}</div>")
        blocks.append(f"<div class='movers' data-stage='{flag}'>{''.join(parts)}</div>")
    picker = (f"<select class='stage-picker' data-blocks='#movers .movers' aria-label='{words('stage')}'>"
              f"{_stage_options(flags, words, flags[0])}</select>")
    return (f"<div id='movers'><h3>{html.escape(words('movers', year=year))}</h3><div class='controls'>{picker}</div>"
            f"{''.join(blocks)}</div>")


def _finder(kind: str, payload: dict, words: Words, years: list[int], stages: list[str], ufs: list[str]) -> str:
    schools = kind == "escolas"
    stage_names = [[f, words.stage(f)] for f in stages]
    columns = [("code", SCHOOL if schools else "CO_MUNICIPIO"), ("name", words("school" if schools else "municipality"))]
    columns += [("muni", words("municipality")), ("uf", words("uf"))] if schools else [("uf", words("uf"))]
    columns += [("stage", words("stage")), ("last", words("census", year=years[0] - 1))]
    columns += [(f"y{y}", str(y)) for y in years] + [("change", words("change", year=years[-1]))]
    text_columns = 5 if schools else 4
    head = "".join(f'<th data-key="{k}"{" class=t" if i < text_columns else ""}>{html.escape(label)}</th>'
                   for i, (k, label) in enumerate(columns))
    uf_options = f'<option value="">{words("all_ufs")}</option>' + "".join(f'<option value="{u}">{u}</option>' for u in ufs)
    placeholder = words("search_school" if schools else "search_muni")
    return (
        f"<div class='finder' id='finder-{kind}'>"
        f"<div class='controls'><input class='q' type='search' placeholder='{html.escape(placeholder)}' aria-label='{words('search')}'>"
        f"<select class='uf' aria-label='{words('uf')}'>{uf_options}</select>"
        f"<select class='stage' aria-label='{words('stage')}'>"
        f"{_stage_options(stages, words, everything=words('all_stages'), values=range(len(stages)))}</select>"
        f"<button class='download' type='button'>{words('download')}</button></div>"
        f"<p class='count'></p><noscript><p>{html.escape(words('needs_script'))}</p></noscript>"
        f"<div class='scroll'><table class='finder-table' id='{kind}-table'><thead><tr>{head}</tr></thead><tbody></tbody></table></div>"
        f"<button class='more' type='button' hidden>{words('more')}</button>"
        f"{_json_block({'kind': kind, 'years': years, 'stages': stage_names, 'csv_columns': CSV_COLUMNS, **payload}, 'finder-data')}</div>"
    )


# the forecast columns of the finder's CSV download, as the forecast files name them
CSV_COLUMNS = [STAGE, YEAR, LAST_ENROLLMENT, FORECAST, LOWER_80, UPPER_80]


def finder_section(out: Path, munis: pl.DataFrame, years: list[int], words: Words, max_schools: int) -> str:
    stages = list(munis[STAGE].unique(maintain_order=True))
    ufs = sorted(u for u in munis["SG_UF"].unique().to_list() if u) if "SG_UF" in munis.columns else []
    muni_payload = data.municipality_table(munis, years, stages)
    school_payload, count = data.school_table(out, years, stages, muni_payload, max_schools)
    parts = [f"<section id='municipios-section'><h2>{words('find')}</h2><p class='muted'>{html.escape(words('find_note'))}</p>",
             _finder("municipios", muni_payload, words, years, stages, ufs), f"<h3>{words('school_table')}</h3>"]
    if school_payload is None:
        parts.append(
            f"<p class='muted' id='school-limit'>"
            f"{html.escape(words('school_limit', schools=words.integer(count), limit=words.integer(max_schools)))}</p>"
        )
    else:
        school_payload["municipalities"] = muni_payload["places"]
        parts.append(f"<p class='muted'>{html.escape(words('school_note'))}</p>")
        parts.append(_finder("escolas", school_payload, words, years, stages, ufs))
    parts.append("</section>")
    return "".join(parts)


def horizon_table(results: pl.DataFrame) -> pl.DataFrame:
    """Per stage and horizon: MAE and state-total error of the chosen model, Persistencia and Coorte."""
    chosen = results.filter(pl.col(CHOSEN)).select(STAGE, HORIZON, pl.col(MODEL).alias("escolhido"))
    wide = chosen
    for label, pick in (("escolhido", None), (PERSISTENCE, PERSISTENCE), (COHORT, COHORT)):
        rows = (results.join(chosen, on=[STAGE, HORIZON]).filter(pl.col(MODEL) == pl.col("escolhido"))
                if pick is None else results.filter(pl.col(MODEL) == pick))
        wide = wide.join(rows.select(STAGE, HORIZON, pl.col(MAE_MEAN).alias(f"MAE_{label}"),
                                     pl.col(APE_STATES).alias(f"APE_UFs_{label}")), on=[STAGE, HORIZON], how="left")
    return wide.sort(STAGE, HORIZON, maintain_order=True)


def _published_check(words: Words, with_births: bool) -> str:
    """The back-test of the published files of a run like this one, with births or without
    (`data.published_backtest`), named as what it is."""
    check = data.published_backtest(with_births)

    def span(values: dict[str, float]) -> dict[str, str]:
        return {"low": words.percent(min(values.values()), signed=False), "high": words.percent(max(values.values()), signed=False)}

    return words("published_check", census=check.census, first=check.origins[0], last=check.origins[1],
                 births=words("published_with_births" if with_births else "published_without_births"),
                 skill=words("published_range", **span(check.skill_one_year)),
                 skill5=words("published_range", **span(check.skill_five_years)),
                 state=words("published_range", **span(check.state_error_one_year)),
                 state5=words("published_range", **span(check.state_error_five_years)))


def _unvalidated_words(unvalidated: dict | None, words: Words) -> str:
    """One sentence per set of horizons no walk-forward could test (the run record's
    `unvalidated_horizons`), naming the stages and the horizon whose model they keep."""
    groups: dict[tuple, list[str]] = {}
    for flag, entry in (unvalidated or {}).items():
        groups.setdefault((tuple(entry.get("years_ahead", [])), entry.get("model_of")), []).append(words.stage(flag))
    return " ".join(words("unvalidated" if source else "unvalidated_none", years=", ".join(map(str, years)),
                          stages=", ".join(stages), source=source)
                    for (years, source), stages in groups.items())


def _births_blend_words(weights: dict | None, words: Words) -> str:
    """Which stages' municipal totals lean on births, and how much (the run record's
    `births_weight`: per stage, its weight by years ahead); nothing where none does."""
    blended = []
    for flag, by_horizon in (weights or {}).items():
        one, *beyond = ([by_horizon[h] for h in sorted(by_horizon, key=int)] if isinstance(by_horizon, dict)
                        else [by_horizon])
        if not (one or any(beyond)):
            continue
        weight = (words.number(one, 2) if all(w == one for w in beyond) else
                  words("births_weight_by_horizon", one=words.number(one, 2), beyond=words.number(beyond[0], 2)))
        blended.append(f"{words.stage(flag)} ({weight})")
    return words("births_blend", stages=", ".join(blended)) if blended else ""


def quality_section(results: pl.DataFrame, totals: pl.DataFrame, words: Words, demography: str | None = None,
                    unvalidated: dict | None = None, births_weight: dict | None = None) -> str:
    """How good, in words and one chart, then the numbers behind them; whether births and
    population informed the forecast (`demography`: their description in the run record) and
    the municipal totals (`births_weight`); and which horizons could not be tested
    (`unvalidated`)."""
    table = data.quality(results)
    horizons = sorted({1, int(results.select(pl.col(HORIZON).max()).item())}) if HORIZON in results.columns else [1]
    h = horizons[-1]

    def versus(column: str, h: int = 1) -> str:
        value = data.weighted(table, column, h)
        if value is None:
            return "–"
        return words("less_error" if value >= 0 else "more_error", pct=words.percent(abs(value), signed=False))

    tested = totals[YEAR].unique().sort().to_list() if YEAR in totals.columns else []
    summary = words("quality_words", first=tested[0] if tested else "", last=tested[-1] if tested else "",
                    mae=words.number(data.weighted(table, MAE_MEAN, 1) or float("nan")),
                    vs_p=versus(SKILL_OF_CHOICE if data.at(SKILL_OF_CHOICE, 1) in table.columns else SKILL_VS_PERSISTENCE),
                    vs_c=versus(SKILL_VS_COHORT), h=h,
                    vs_p_h=versus(SKILL_VS_PERSISTENCE, h), vs_c_h=versus(SKILL_VS_COHORT, h),
                    cov80=words.percent(data.weighted(table, COVERAGE_80_MEAN, 1), signed=False),
                    cov95=words.percent(data.weighted(table, COVERAGE_95_MEAN, 1), signed=False))
    published = _published_check(words, with_births=bool(demography))
    births = words("demography_used", source=demography) if demography else words("demography_none")
    births = " ".join(part for part in (births, _births_blend_words(births_weight, words)) if part)
    untested = _unvalidated_words(unvalidated, words)
    untested = f"<p id='quality-unvalidated'>{html.escape(untested)}</p>" if untested else ""
    header = [words("stage"), words("model")]
    columns = []
    for hh in horizons:
        columns += [(data.at(MAE_MEAN, hh), words("error_h", h=hh), "num"),
                    (data.at(SKILL_VS_PERSISTENCE, hh), words("vs_p_h", h=hh), "p"),
                    (data.at(SKILL_VS_COHORT, hh), words("vs_c_h", h=hh), "p")]
    columns += [(data.at(COVERAGE_80_MEAN, 1), words("coverage", level=80), "c"),
                (data.at(COVERAGE_95_MEAN, 1), words("coverage", level=95), "c")]
    rows = []
    for r in table.iter_rows(named=True):
        chosen = dict.fromkeys(str(r.get(data.at(MODEL, hh)) or "") for hh in horizons)  # one year ahead / last horizon
        cells = [f"<td>{html.escape(words.stage(r[STAGE]))}</td><td>{html.escape(' / '.join(m for m in chosen if m))}</td>"]
        for column, _, kind in columns:
            value = r.get(column)
            css = ""
            if kind == "p" and value is not None:
                css = ' class="pos"' if value > 0.0005 else (' class="neg"' if value < -0.0005 else "")
            text = words.number(value, 2) if kind == "num" else words.percent(value, signed=kind == "p")
            cells.append(f"<td{css}>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(t)}</th>" for t in header + [c[1] for c in columns])
    detail = horizon_table(results) if HORIZON in results.columns else None
    horizons_part = ""
    if detail is not None:
        plots = "".join(_img(charts.horizon_plot(detail, flag, words), f"{flag} error by horizon")
                        for flag in detail[STAGE].unique(maintain_order=True))
        horizons_part = (f"<details id='horizons-section'><summary>{words('horizons')}</summary>"
                         f"<p class='muted'>{html.escape(words('horizons_note'))}</p>"
                         f"{metrics_table(detail, words, 'horizons', decimals=3)}<div class='grid'>{plots}</div></details>")
    return (f"<section id='quality-section'><h2>{words('quality')}</h2><p id='quality-words'>{html.escape(summary)}</p>"
            f"<p id='quality-published'>{html.escape(published)}</p>"
            f"<p id='quality-demography'>{html.escape(births)}</p>{untested}"
            f"{_img(charts.skill_chart(table, horizons, words), words('skill_chart'))}"
            f"<p class='muted'>{html.escape(words('quality_table_note'))}</p>"
            f"<div class='scroll'><table id='quality'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            f"{horizons_part}</section>")


def _metadata(meta: dict, words: Words) -> str:
    items = {
        "years": ", ".join(str(y) for y in meta.get("years", [])),
        "stages": ", ".join(meta.get("stages", [])),
        "device": meta.get("device", ""),
        "demography": meta.get("demography") or "–",
        "skipped stages": "; ".join(f"{k}: {v}" for k, v in (meta.get("skipped_stages") or {}).items()) or "–",
        "started (UTC)": meta.get("started_utc", ""),
        "total (s)": words.number(meta.get("timings_s", {}).get("total", 0), 0),
        "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if k != "platform"),
        "durations (s)": ", ".join(f"{k} {words.number(v)}" for k, v in meta.get("timings_s", {}).items() if k != "total"),
    }
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items()) + "</dl>"


def analyst_section(out: Path, meta: dict, results: pl.DataFrame, totals: pl.DataFrame, errors: pl.DataFrame,
                    country: pl.DataFrame, states: pl.DataFrame, words: Words) -> str:
    """Everything the analyst had before, collapsed: metrics, the area tables, per-stage
    validation plots and SHAP, and the run's configuration and timings."""
    bounds = [LOWER_95, LOWER_80, FORECAST, UPPER_80, UPPER_95]
    parts_of = [c for c in (SCHOOLS_FORECAST, NEW_OFFERINGS_FORECAST, BIRTHS_ADJUSTMENT) if c in country.columns]
    national = country.select(STAGE, YEAR, LAST_ENROLLMENT, *parts_of, *bounds).sort(STAGE, YEAR, maintain_order=True)
    state_table = states.select(STAGE, YEAR, "SG_UF", LAST_ENROLLMENT, *bounds).sort(STAGE, YEAR, "SG_UF")
    parts = ["<section id='analyst-section' class='analyst'>", f"<h2>{words('analyst')}</h2>",
             f"<details><summary>{words('metrics')}</summary>{metrics_table(results, words, 'metrics')}</details>",
             f"<details><summary>{outputs.forecast_file('{ano}', 'brasil')}</summary>"
             f"{metrics_table(national, words, 'forecast', decimals=0)}</details>",
             f"<details><summary>{outputs.forecast_file('{ano}', 'ufs')}</summary>"
             f"{metrics_table(state_table, words, 'forecast-states', decimals=0)}</details>"]
    one_year = results.filter(pl.col(HORIZON) == 1) if HORIZON in results.columns else results
    chosen = dict(one_year.filter(pl.col(CHOSEN)).select(STAGE, MODEL).iter_rows()) if CHOSEN in results.columns else {}
    for flag in results[STAGE].unique(maintain_order=True):
        images = [_img(charts.totals_plot(totals.filter(pl.col(STAGE) == flag), flag, chosen.get(flag, ENSEMBLE), words), f"{flag} totals"),
                  _img(charts.error_by_size_plot(errors.filter(pl.col(STAGE) == flag), flag, words), f"{flag} error by size")]
        shap_pngs = sorted(p for p in (out / outputs.SHAP).glob(outputs.shap_png("*", flag, "*")) if outputs.is_shap_png(p.name, flag))
        shap_part = (
            (
                f"<h3>{words('shap')}</h3><div class='grid'>"
                + "".join(_img(charts.compact_png(p.read_bytes()), p.stem) for p in shap_pngs)
                + "</div>"
            )
            if shap_pngs
            else ""
        )
        parts.append(f"<details id='stage-{flag}'><summary>{html.escape(words('stage_details', stage=words.stage(flag)))}</summary>"
                     f"<div class='grid'>{''.join(images)}</div>{shap_part}</details>")
    parts.append(f"<details id='run-details'><summary>{words('run')}</summary>{_metadata(meta, words)}</details></section>")
    return "".join(parts)


def pictures_section(out: Path, history: pl.DataFrame | None, country: pl.DataFrame, states: pl.DataFrame,
                     munis: pl.DataFrame, years: list[int], words: Words, municipal_map: bool) -> str:
    """Where it grows and where it shrinks: fan charts, the state map, the largest changes."""
    flags = list(country[STAGE].unique(maintain_order=True))
    parts = [f"<section id='pictures-section'><h2>{words('pictures')}</h2><h3>{words('fans')}</h3><div class='grid'>"]
    if history is not None:
        parts += [_img(charts.fan_chart(history, country, flag, words), f"{flag} fan chart") for flag in flags]
    parts.append("</div><div class='maps'>" + tile_map(states, years, words))
    if municipal_map:
        pngs = choropleth.municipal_map(munis.filter(pl.col(YEAR) == years[-1]), words)
        parts.append("<div class='municipal-map'>" + "".join(_img(png, f"{flag} municipal map") for flag, png in pngs.items()) + "</div>")
    parts.append("</div>" + movers_section(munis, data.schools(out, years[-1]), years[-1], years[0] - 1, words))
    if history is not None:
        parts.append(f"<details><summary>{words('state_fans')}</summary>"
                     + "".join(_img(charts.state_fans(history, states, flag, words), f"{flag} states") for flag in flags)
                     + "</details>")
    parts.append("</section>")
    return "".join(parts)


def _area_name(states: pl.DataFrame, words: Words) -> str:
    present = sorted(u for u in states["SG_UF"].unique().to_list() if u)
    return words("country") if len(present) >= len(TILES) else words("area_partial", count=len(present))


def build_report(out: Path, lang: str | None = None, *, target: Path | None = None, max_schools: int | None = None,
                 municipal_map: bool | None = None) -> Path:
    """Write OUT/report.html (or `target`) from the outputs already in OUT, after checking they
    are the run's. Unset options take the run's recorded settings."""
    out = Path(out)
    if (out / outputs.INCOMPLETE).exists():
        raise data.DamagedOutput(f"{out} was left by a command that did not finish ({outputs.INCOMPLETE}): its files may "
                                 f"mix two runs; rerun `censo-forecast run --out {out}` (finished stages resume)")
    needed = [out / name for name in (outputs.RESULTS, outputs.CV_TOTALS, outputs.ERROR_BY_SIZE)]
    meta = data.run_record(out)
    data.verify(out, meta)
    for path in needed:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `censo-forecast run --out {out}` first")
    recorded = meta.get("settings", {}) if isinstance(meta.get("settings"), dict) else {}
    words = Words(lang or recorded.get("report_lang") or config.default("report_lang"))
    if max_schools is None:  # the run's, or the setting's default (0 is a choice: no school table)
        recorded_max = recorded.get("report_max_schools")
        max_schools = int(recorded_max) if isinstance(recorded_max, int) else config.default("report_max_schools")
    municipal_map = municipal_map if municipal_map is not None else bool(recorded.get("municipal_map"))
    results, totals, errors = (pl.read_csv(path) for path in needed)
    years = data.forecast_years(out, meta)
    if not years:
        raise FileNotFoundError(f"no forecast files (previsoes_*_brasil.csv) in {out}: run `censo-forecast run --out {out}` first")
    country, states, munis = (data.areas(out, years, level) for level in ("brasil", "ufs", "municipios"))
    history = pl.read_csv(out / outputs.HISTORY) if (out / outputs.HISTORY).exists() else None
    area = _area_name(states, words)
    census_years = meta.get("years") or []
    pictures = pictures_section(out, history, country, states, munis, years, words, municipal_map)
    subtitle = words("subtitle", first=census_years[0] if census_years else "", last=census_years[-1] if census_years else "",
                     years=f"{years[0]}–{years[-1]}" if len(years) > 1 else str(years[0]))
    parts = [
        f"<!doctype html><html lang='{words.lang}'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{html.escape(words('title'))}: {html.escape(area)}</title><style>{_asset('report.css')}</style></head><body><main>",
        f"<h1>{html.escape(words('title'))}</h1><p class='muted'>{html.escape(subtitle)}</p>",
        headline_section(data.headline(country, history), area, words),
        pictures,
        finder_section(out, munis, years, words, max_schools),
        quality_section(results, totals, words, meta.get("demography"), meta.get("unvalidated_horizons"),
                        meta.get("births_weight")),
        analyst_section(out, meta, results, totals, errors, country, states, words),
        _json_block(words.script_settings(), element_id="report-settings"),
        f"<script>{_asset('report.js')}</script></main></body></html>",
    ]
    target = Path(target) if target is not None else out / outputs.REPORT
    atomic.write_text(target, "\n".join(parts))
    return target
