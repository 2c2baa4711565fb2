"""report.html: its words and numbers, its data blocks, and the page in a real browser as a
planner uses it (search, download, map, both languages)."""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import os
import re
import shutil
import sys
import unicodedata
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from censo_forecast import outputs
from censo_forecast.cli import app
from censo_forecast.config import load_settings
from censo_forecast.inep.catalog import MAJOR_STAGES
from censo_forecast.report import build_report, charts, choropleth, data, i18n
from censo_forecast.report import page as page_mod
from censo_forecast.report.i18n import TILES, Words, round_half_up

ARTIFACTS = Path(os.environ.get("CENSO_FORECAST_ARTIFACTS", Path(__file__).resolve().parents[1] / "build" / "test-artifacts"))
SECTIONS = ["headline-section", "pictures-section", "municipios-section", "quality-section", "analyst-section"]


# ----------------------------------------------------------------- words and numbers
def test_numbers_are_written_the_way_each_reader_writes_them():
    pt, en = Words("pt-BR"), Words("en")
    assert pt.integer(1234567.4) == "1.234.567" and en.integer(1234567.4) == "1,234,567"
    assert pt.number(1234.56) == "1.234,6" and en.number(1234.56) == "1,234.6"
    assert pt.percent(0.0234) == "+2,3 %" and en.percent(-0.0234) == "-2.3 %" and pt.percent(0.5, signed=False) == "50,0 %"
    # halves round up, as the page's Math.round does (Python's round() would give 2 and 6,2 %)
    assert pt.integer(2.5) == "3" and pt.integer(-2.5) == "-2" and round_half_up(0.5) == 1
    assert pt.percent(0.0625) == "+6,3 %"  # 62.5 tenths
    assert pt.integer(None) == "–" and pt.percent(float("nan")) == "–"


def test_stage_names_and_words_follow_the_language():
    pt, en = Words("pt-BR"), Words("en")
    assert pt.stage("IN_INF_PRE") == "Pré-escola" and pt.stage("IN_MED") == "Ensino médio" and en.stage("IN_MED") == "High school"
    assert pt("find") == "Encontre seu município" and en("find") == "Find your municipality"
    with pytest.raises(ValueError, match="pt-BR, en"):
        Words("es")


def test_report_language_is_a_checked_setting(tmp_path):
    assert load_settings(None).report_lang == "pt-BR"
    toml = tmp_path / "s.toml"
    toml.write_text('report_lang = "en"\nreport_max_schools = 50\n')
    s = load_settings(toml)
    assert (s.report_lang, s.report_max_schools) == ("en", 50)
    with pytest.raises(ValueError, match="report_lang must be one of pt-BR, en"):
        load_settings(None, report_lang="pt")


def test_the_map_has_every_state_once_in_its_own_place():
    assert len(TILES) == 27 and len(set(TILES.values())) == 27
    from censo_forecast.inep import catalog
    assert set(TILES) == {abbr for _, abbr, _, _ in catalog.UFS}
    # the south below the north-east, the west left of the east
    assert TILES["RS"][0] > TILES["SP"][0] > TILES["BA"][0] > TILES["CE"][0] and TILES["AC"][1] < TILES["PE"][1]


# ----------------------------------------------------------------- data blocks
def _areas() -> pl.DataFrame:
    return pl.DataFrame({
        "etapa": ["IN_MED"] * 4 + ["IN_INF_CRE"] * 2, "CO_MUNICIPIO": [1, 1, 2, 2, 1, 2],
        "NO_MUNICIPIO": ["São Luís", "São Luís", "Rio Branco", "Rio Branco", "São Luís", "Rio Branco"],
        "SG_UF": ["MA", "MA", "AC", "AC", "MA", "AC"], "NU_ANO_CENSO": [2026, 2027, 2026, 2027, 2027, 2027],
        outputs.LAST_ENROLLMENT: [100.0, 100.0, 40.0, 40.0, 0.0, 10.0], outputs.FORECAST: [102.5, 99.4, 45.0, 30.0, 5.0, 10.0],
        "limite_inferior_80": [90.0, 85.0, 40.0, 20.0, 0.0, 8.0], "limite_superior_80": [110.49, 115.5, 50.0, 41.0, 9.0, 12.0],
        outputs.HORIZON: [1, 2, 1, 2, 2, 2]})


def test_table_records_hold_the_rounded_file_values_and_the_change():
    table = data.municipality_table(_areas(), [2026, 2027], ["IN_MED", "IN_INF_CRE"])
    assert table["places"] == [[1, "São Luís", "MA"], [2, "Rio Branco", "AC"]]
    rows = {(r[0], r[1]): r for r in table["rows"]}
    # place, stage, last census, then 2026 (forecast, low, high), 2027 (...), change to 2027 in tenths of a per cent
    assert rows[(0, 0)] == [0, 0, 100, 103, 90, 110, 99, 85, 116, -6]
    assert rows[(1, 0)] == [1, 0, 40, 45, 40, 50, 30, 20, 41, -250]
    assert rows[(0, 1)] == [0, 1, 0, None, None, None, 5, 0, 9, None]  # no 2026 row; nothing to compare with 0
    assert rows[(1, 1)] == [1, 1, 10, None, None, None, 10, 8, 12, 0]
    nothing = _areas().with_columns(pl.when(pl.col("etapa") == "IN_INF_CRE").then(0.4).otherwise(pl.col(c)).alias(c)
                                    for c in (outputs.LAST_ENROLLMENT, outputs.FORECAST, "limite_inferior_80", "limite_superior_80"))
    rows = {(r[0], r[1]) for r in data.municipality_table(nothing, [2026, 2027], ["IN_MED", "IN_INF_CRE"])["rows"]}
    assert rows == {(0, 0), (1, 0)}  # every number rounds to 0: a municipality without the stage has no line


def test_movers_rank_by_students_not_per_cent():
    growth, decline = data.movers(_areas().filter(pl.col("NU_ANO_CENSO") == 2027))["IN_MED"]
    assert growth.height == 0 and decline["CO_MUNICIPIO"].to_list() == [2, 1]  # -10 students before -0.6


def test_state_map_values_are_the_file_values_written_for_the_reader():
    states = _areas().rename({"CO_MUNICIPIO": "CO_UF"})
    values = data.state_map(states, Words("pt-BR"))
    assert values["IN_MED"]["2027"]["AC"][:2] == ["30", "-25,0 %"] and values["IN_MED"]["2026"]["MA"][:2] == ["103", "+2,5 %"]
    assert values["IN_INF_CRE"]["2027"]["MA"][1] == "–"  # from zero students there is no percentage


def test_sparkline_draws_census_forecast_and_band():
    svg = charts.sparkline([2023, 2024, 2025], [10, 12, 11], [2026, 2027], [12, 13], [10, 9], [14, 16])
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "<polygon" in svg
    assert "<polygon" not in charts.sparkline([2025], [10], [2026], [11], [None], [None])  # an unvalidated horizon: no band


def test_compact_png_is_smaller_and_still_the_picture():
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(50), [v ** 0.5 for v in range(50)])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    original = buffer.getvalue()
    small = charts.compact_png(original)
    assert len(small) < 0.7 * len(original)
    a, b = (Image.open(io.BytesIO(x)).convert("RGB") for x in (original, small))
    assert a.size == b.size and a.getpixel((10, 10)) == b.getpixel((10, 10))


def test_municipal_map_without_geobr_warns_and_leaves_the_report_whole(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "geobr", None)  # import geobr raises ImportError
    with caplog.at_level(logging.WARNING):
        assert choropleth.municipal_map(_areas(), Words("en")) == {}
    assert "geobr is not installed" in caplog.text


def test_municipal_map_offline_warns_and_fetches_nothing_else(monkeypatch, caplog):
    class Offline:
        @staticmethod
        def read_municipality(**kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "geobr", Offline)
    with caplog.at_level(logging.WARNING):
        assert choropleth.municipal_map(_areas(), Words("en")) == {}
    assert "could not fetch municipal boundaries" in caplog.text and "no route to host" in caplog.text


def test_municipal_map_draws_each_stage_from_geobr_boundaries(monkeypatch):
    """geobr's own download is never run in tests; a stand-in returns what it returns (a
    GeoDataFrame with code_muni and geometry), so the drawing is the real one."""
    geopandas = pytest.importorskip("geopandas")
    from shapely.geometry import box

    class Boundaries:
        @staticmethod
        def read_municipality(code_muni, year):
            assert (code_muni, year) == ("all", choropleth.BOUNDARY_YEAR)
            return geopandas.GeoDataFrame({"code_muni": [1.0, 2.0, 3.0]}, geometry=[box(0, 0, 1, 1), box(1, 0, 2, 1), box(0, 1, 1, 2)])

    monkeypatch.setitem(sys.modules, "geobr", Boundaries)
    pngs = choropleth.municipal_map(_areas().filter(pl.col("NU_ANO_CENSO") == 2027), Words("pt-BR"))
    assert set(pngs) == {"IN_MED", "IN_INF_CRE"}
    image = Image.open(io.BytesIO(pngs["IN_MED"])).convert("RGB")
    assert len(image.getcolors(maxcolors=1 << 16) or ()) > 10  # coloured polygons and a colour bar, not a blank figure


# ----------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def reports(run_out, tmp_path_factory):
    """The run's own report (pt-BR, its default) and the English one written by `report --lang en`."""
    folder = tmp_path_factory.mktemp("reports")
    english = folder / "report_en.html"
    build_report(run_out, "en", target=english)
    return {"pt-BR": run_out / "report.html", "en": english}


@pytest.mark.slow
def test_report_is_self_contained_and_ordered(reports, run_out):
    text = reports["pt-BR"].read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<script src" not in text and "<link" not in text
    assert text.startswith("<!doctype html><html lang='pt-BR'>") and "Encontre seu município" in text
    positions = [text.index(f"id='{s}'") for s in SECTIONS]
    assert positions == sorted(positions)
    # the analyst's material is there, collapsed: every <details> closed
    analyst = text[text.index("id='analyst-section'"):]
    assert analyst.count("<details") >= 4 and "<details open" not in text
    assert 'id="metrics"' in analyst and "SHAP" in analyst
    english = reports["en"].read_text(encoding="utf-8")
    assert english.startswith("<!doctype html><html lang='en'>") and "Find your municipality" in english


def test_report_command_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="resultados_finais.csv not found"):
        build_report(tmp_path)


@pytest.mark.slow
def test_report_command_writes_the_language_asked_for(run_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--lang", "en", "--max-schools", "0"])
    assert result.exit_code == 0, result.output
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "<html lang='en'>" in text and "id='school-limit'" in text and "limit of 0 (report_max_schools)" in text
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--lang", "fr"])
    assert result.exit_code == 2 and "pt-BR, en" in result.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c)).lower()


def _listed(frame: pl.DataFrame, key: str = "CO_MUNICIPIO", names: tuple[str, ...] = ("NO_MUNICIPIO", "SG_UF")) -> pl.DataFrame:
    """The (place, stage) lines the page lists: those with a number that does not round to 0."""
    numbers = (outputs.LAST_ENROLLMENT, outputs.FORECAST, "limite_inferior_80", "limite_superior_80")
    rounded = [pl.col(c).fill_null(0).map_elements(round_half_up, return_dtype=pl.Int64).abs().max() for c in numbers]
    return (frame.group_by(key, "etapa").agg(*[pl.col(n).first() for n in names], pl.max_horizontal(*rounded).alias("largest"))
            .filter(pl.col("largest") > 0).drop("largest"))


def _matching(frame: pl.DataFrame, columns: tuple[str, ...], tokens: list[str]) -> pl.DataFrame:
    """The rows the page's search keeps: every word typed appears in one of the columns."""
    return frame.filter(pl.struct(*columns).map_elements(
        lambda s: all(t in _fold(" ".join(str(s[c]) for c in columns)) for t in tokens), return_dtype=pl.Boolean))


def _cells(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(selector, "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
@pytest.mark.slow
@pytest.mark.parametrize("lang", ["pt-BR", "en"])
def test_report_in_a_real_browser(reports, run_out, lang, tmp_path):
    from playwright.sync_api import sync_playwright

    words = Words(lang)
    meta = json.loads((run_out / outputs.METADATA).read_text())
    years = meta["forecast_years"]
    country = data.areas(run_out, years, "brasil")
    states = data.areas(run_out, years, "ufs")
    munis = data.areas(run_out, years, "municipios")
    results = pl.read_csv(run_out / outputs.RESULTS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        page = context.new_page()
        problems = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on(
            "request", lambda req: problems.append(f"network: {req.url}") if not req.url.startswith(("file:", "data:", "blob:")) else None
        )
        page.goto(reports[lang].as_uri())
        page.wait_for_load_state("load")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report_first_screen_{lang}.png"))  # what a planner sees first

        # (a) the headline: the country's forecast per stage and year, as in previsoes_*_brasil.csv
        order = page.eval_on_selector_all("main > section", "s => s.map(x => x.id)")
        assert order == SECTIONS
        assert page.locator("#headline").is_visible() and page.locator("#headline").bounding_box()["y"] < 900
        headline = _cells(page, "#headline tbody tr")
        assert [r[0] for r in headline] == [words.stage(f) for f in country["etapa"].unique(maintain_order=True)]
        for cells, flag in zip(headline, country["etapa"].unique(maintain_order=True), strict=True):
            rows = country.filter(pl.col("etapa") == flag).sort("NU_ANO_CENSO")
            assert cells[2] == words.integer(rows[outputs.LAST_ENROLLMENT][0])
            for i, r in enumerate(rows.iter_rows(named=True)):
                expected = words.integer(r[outputs.FORECAST])
                assert cells[3 + i].split("\n")[0] == expected
                assert cells[3 + i].split("\n")[1] == f"{words.integer(r['limite_inferior_80'])}–{words.integer(r['limite_superior_80'])}"

        # (b) the map: 27 tiles with the values of previsoes_{year}_ufs.csv, for any stage and year picked
        def check_map(flag: str, year: int):
            tiles = page.eval_on_selector_all(
                ".tile",
                "ts => ts.map(t => [t.dataset.uf, t.querySelector('.change').textContent, t.querySelector('.students').textContent])",
            )
            assert len(tiles) == 27 and {t[0] for t in tiles} == set(TILES)
            expected = data.with_change(states.filter((pl.col("etapa") == flag) & (pl.col("NU_ANO_CENSO") == year)))
            by_uf = {r["SG_UF"]: r for r in expected.iter_rows(named=True)}
            for uf, change, students in tiles:
                if uf in by_uf:
                    assert (change, students) == (words.percent(by_uf[uf]["change_pct"]), words.integer(by_uf[uf][outputs.FORECAST]))
                else:
                    assert change == words("no_data") and students == ""
            assert len(by_uf) > 0

        check_map(country["etapa"][0], years[-1])
        page.select_option("select.map-stage", "IN_MED")
        page.select_option("select.map-year", str(years[0]))
        check_map("IN_MED", years[0])

        # find my municipality: the search filters the table, the download holds the filtered rows
        finder = page.locator("#finder-municipios")
        listed = _listed(munis)
        total = listed.height
        assert finder.locator(".count").inner_text() == words("shown", shown=words.integer(min(100, total)), total=words.integer(total))
        name = listed.filter(pl.col("etapa") == "IN_MED").sort("CO_MUNICIPIO")["NO_MUNICIPIO"][0]
        finder.locator("input.q").fill(_fold(name).upper())  # accents and case do not matter
        tokens = _fold(name).split()
        matching = _matching(listed, ("CO_MUNICIPIO", "NO_MUNICIPIO", "SG_UF"), tokens)
        shown = _cells(page, "#municipios-table tbody tr")
        assert 0 < len(shown) == matching.height < total
        assert all(tokens[0] in _fold(r[1]) for r in shown)
        with page.expect_download() as info:
            finder.locator("button.download").click()
        text = Path(info.value.path()).read_text(encoding="utf-8-sig")
        downloaded = list(csv.DictReader(io.StringIO(text)))
        expected = munis.join(matching.select("CO_MUNICIPIO", "etapa"), on=["CO_MUNICIPIO", "etapa"])
        assert len(downloaded) == expected.height
        for row in downloaded:
            file_row = expected.filter((pl.col("CO_MUNICIPIO") == int(row["CO_MUNICIPIO"])) & (pl.col("etapa") == row["etapa"])
                                       & (pl.col("NU_ANO_CENSO") == int(row["NU_ANO_CENSO"]))).row(0, named=True)
            assert row["NO_MUNICIPIO"] == file_row["NO_MUNICIPIO"]
            for column in (outputs.FORECAST, "limite_inferior_80", "limite_superior_80", outputs.LAST_ENROLLMENT):
                assert int(row[column]) == round_half_up(file_row[column]), (row, column)
        # filters narrow further; sorting by a column orders the rows
        finder.locator("input.q").fill("")
        finder.locator("select.stage").select_option(label=words.stage("IN_MED"))
        assert len(_cells(page, "#municipios-table tbody tr")) == min(100, listed.filter(pl.col("etapa") == "IN_MED").height)
        finder.locator("th[data-key=last]").click()
        finder.locator("th[data-key=last]").click()  # descending
        lasts = [int(re.sub(r"\D", "", r[4])) for r in _cells(page, "#municipios-table tbody tr")]
        assert lasts == sorted(lasts, reverse=True) and lasts[0] == round_half_up(
            munis.filter(pl.col("etapa") == "IN_MED")[outputs.LAST_ENROLLMENT].max())

        # the school table, filtered by municipality
        schools_finder = page.locator("#finder-escolas")
        assert schools_finder.locator("tbody tr").count() == 0
        school_file = data.schools(run_out, years[-1]).join(
            munis.select("CO_MUNICIPIO", "NO_MUNICIPIO", "SG_UF").unique("CO_MUNICIPIO"), on="CO_MUNICIPIO", how="left")
        schools_finder.locator("input.q").fill(name)
        expected_schools = _matching(_listed(school_file, "CO_ENTIDADE", ("NO_ENTIDADE", "NO_MUNICIPIO", "SG_UF")),
                                     ("CO_ENTIDADE", "NO_ENTIDADE", "NO_MUNICIPIO", "SG_UF"), _fold(name).split())
        school_rows = _cells(page, "#escolas-table tbody tr")
        assert len(school_rows) == min(100, expected_schools.height) > 0

        # (c) how good: the words and the table agree with resultados_finais.csv
        quality = _cells(page, "#quality tbody tr")
        chosen = results.filter(pl.col("Escolhido") & (pl.col("horizonte") == 1))
        for cells in quality:
            flag = next(f for f in chosen["etapa"] if words.stage(f) == cells[0])
            row = chosen.filter(pl.col("etapa") == flag).row(0, named=True)
            assert cells[1].split(" / ")[0] == row["modelo"] and cells[2] == words.number(row["MAE_Media_CV"], 2)
            assert cells[3] == words.percent(row["Skill_MAE_vs_Persistencia"])
        assert len(quality) == chosen.height
        # the error by horizon (#14) is still there, collapsed
        by_horizon = page.eval_on_selector_all("#horizons tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
        every = results.filter(pl.col("Escolhido")).sort("etapa", "horizonte")
        assert len(by_horizon) == every.height and not page.locator("#horizons").is_visible()
        for cells, expected in zip(by_horizon, every.iter_rows(named=True), strict=True):
            assert (cells[0], int(cells[1]), cells[2]) == (expected["etapa"], expected["horizonte"], expected["modelo"])
            assert cells[3] == words.number(expected["MAE_Media_CV"], 3)

        # printed, nothing stays collapsed or hidden behind a picker
        page.emulate_media(media="print")
        assert page.locator("#movers .movers[hidden]").count() > 0 and all(
            page.eval_on_selector_all("#movers .movers", "bs => bs.map(b => getComputedStyle(b).display !== 'none')"))
        page.evaluate("() => window.dispatchEvent(new Event('beforeprint'))")
        assert page.eval_on_selector_all("details", "ds => ds.every(d => d.open)") and page.locator("#horizons").is_visible()
        page.emulate_media(media="screen")

        # the images load, and a phone shows the page without sideways scrolling
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        assert images and all(done and width > 0 for done, width in images)
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        context.close()
        browser.close()
    assert problems == []


def test_the_report_names_the_walk_forward_and_quotes_the_back_test_of_what_is_published(run_out):
    """The "how good" words say what the walk-forward leaves out and quote the back-test of the
    published files of a run like this one (`data.published_backtest`): this run had no
    births, so the back-test without them, with its census, origins and range of skill; the
    same outputs with births quote the other one."""
    text = (run_out / outputs.REPORT).read_text(encoding="utf-8")
    found = re.search(r"<p id='quality-published'>(.*?)</p>", text)
    assert found, "no back-test paragraph"
    words = i18n.Words("pt-BR")

    def quotes(paragraph: str, check: data.PublishedBacktest) -> bool:
        def span(values: dict[str, float]) -> str:
            return f"de {words.percent(min(values.values()), signed=False)} a {words.percent(max(values.values()), signed=False)}"
        return (f"{span(check.skill_one_year)} menos erro" in paragraph
                and f"cinco anos à frente, {span(check.skill_five_years)}." in paragraph
                and f"errou {span(check.state_error_one_year)} um ano à frente e {span(check.state_error_five_years)} cinco" in paragraph)

    without, with_births = data.published_backtest(False), data.published_backtest(True)
    paragraph = html.unescape(found.group(1))
    assert without.census in paragraph and f"{without.origins[0]} a {without.origins[1]}" in paragraph
    assert "sem nascimentos" in paragraph and quotes(paragraph, without) and not quotes(paragraph, with_births)
    assert "novas ofertas" in paragraph  # what the walk-forward leaves out
    births_page = html.unescape(page_mod.quality_section(pl.read_csv(run_out / outputs.RESULTS), pl.read_csv(run_out / outputs.CV_TOTALS),
                                                         words, "data/demografia: births 1996-2025"))
    births_paragraph = re.search(r"<p id='quality-published'>(.*?)</p>", births_page).group(1)
    assert "com nascimentos e população" in births_paragraph and quotes(births_paragraph, with_births)
    for check in (without, with_births):
        assert all(set(part) == set(MAJOR_STAGES) for part in (check.skill_one_year, check.skill_five_years,
                                                                check.state_error_one_year, check.state_error_five_years))


def test_the_report_says_whether_births_informed_the_forecast(run_out, tmp_path):
    """The run without demography says so; the same outputs with a run record naming the
    births files say that instead."""
    text = (run_out / outputs.REPORT).read_text(encoding="utf-8")
    assert "Sem dados de nascimentos e população" in html.unescape(re.search(r"<p id='quality-demography'>(.*?)</p>", text).group(1))
    copy = tmp_path / "out"
    shutil.copytree(run_out, copy)
    meta = json.loads((copy / outputs.METADATA).read_text())
    page = page_mod.quality_section(pl.read_csv(copy / outputs.RESULTS), pl.read_csv(copy / outputs.CV_TOTALS),
                                       i18n.Words("en"), "data/demografia: births 1996-2025")
    assert "use births and population per municipality (data/demografia: births 1996-2025)" in html.unescape(page)
    assert meta.get("demography") is None and "ajuste_nascimentos" not in page  # no blend without births
    blended = html.unescape(page_mod.quality_section(
        pl.read_csv(copy / outputs.RESULTS), pl.read_csv(copy / outputs.CV_TOTALS), i18n.Words("pt-BR"),
        "data/demografia: births 1996-2025", None, {"IN_INF_CRE": {"1": 0.25, "2": 0.5, "3": 0.5},
                                                    "IN_FUND_AI": {"1": 1.0, "2": 1.0}, "IN_MED": {"1": 0.0, "2": 0.0}}))
    sentence = re.search(r"<p id='quality-demography'>(.*?)</p>", blended).group(1)
    assert ("Os totais por município de Creche (0,25 um ano à frente, 0,50 mais à frente), Fundamental anos iniciais "
            "(1,00) combinam") in sentence
    assert "ajuste_nascimentos" in sentence and "Ensino médio" not in sentence  # weight 0: not named
    older = html.unescape(page_mod.quality_section(  # a run record of an earlier version: one weight per stage
        pl.read_csv(copy / outputs.RESULTS), pl.read_csv(copy / outputs.CV_TOTALS), i18n.Words("pt-BR"),
        "data/demografia: births 1996-2025", None, {"IN_INF_CRE": 0.5, "IN_MED": 0.0}))
    assert "Os totais por município de Creche (0,50) combinam" in older
