"""The multi-table layout (2025 on): recognised by its members, joined by school, the same
cache as the one-table layout, the offer rule, and clear errors for damaged tables."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import polars as pl
import pytest

from censo_forecast.inep import catalog, ingest, layouts, synthetic
from censo_forecast.inep.csvread import IngestError

YEARS = list(range(2018, 2022))


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
    """The same synthetic census twice: INEP's one-table layout, and with 2021 in tables."""
    root = tmp_path_factory.mktemp("layouts")
    for name, tables_from in (("single", 2026), ("tables", 2021)):
        synthetic.generate(root / name, synthetic.SynthSettings(YEARS, schools=300, seed=21, tables_from=tables_from))
    return root / "single", root / "tables"


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a zip, passing each member through change(name, data) -> (name, data) or None (drop)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            out = change(info.filename, zin.read(info))
            if out is not None:
                zout.writestr(out[0], out[1])
    return dst


def _edit_csv(data: bytes, edit) -> bytes:
    frame = pl.read_csv(io.BytesIO(data), separator=";", infer_schema=False, encoding="latin-1")
    buffer = io.BytesIO()
    edit(frame).write_csv(buffer, separator=";", quote_style="never", null_value="")
    return buffer.getvalue().decode("utf-8").encode("latin-1")


def test_a_year_in_tables_ingests_to_the_same_cache_as_in_one_table(both_layouts):
    single, tables = both_layouts
    assert (tables / "microdados_censo_escolar_2021_.zip").exists() and not (tables / "microdados_censo_escolar_2021.zip").exists()
    one = ingest.read_census_zip(single / "microdados_censo_escolar_2021.zip", 2021)
    many = ingest.read_census_zip(tables / "microdados_censo_escolar_2021_.zip", 2021)
    assert many.schema == one.schema == pl.Schema(catalog.CACHE_SCHEMA)
    # every cell the one-table file has: counts, derived offer flags, identity, names, dates
    grades = list(catalog.GRADE_COLUMNS)
    assert many.drop(grades).equals(one.drop(grades))
    # the tables (2025's headers) also carry grades, which add up to their stage
    assert one.select(grades).null_count().sum_horizontal().item() == one.height * len(grades)
    active = many.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == 1)
    assert active.select((pl.sum_horizontal(f"QT_MAT_FUND_AI_{g}" for g in range(1, 6)) == pl.col("QT_MAT_FUND_AI")).all()).item()


def test_tables_are_found_by_base_name_in_any_case_folder_and_release(both_layouts, tmp_path):
    _, tables = both_layouts
    original = ingest.read_census_zip(tables / "microdados_censo_escolar_2021_.zip", 2021)

    def rename(name: str, data: bytes):
        base = name.rsplit("/", 1)[-1]
        if base.lower().startswith("tabela_"):
            base = base.lower().replace("_v2", "")  # tabela_escola_2021.csv: the first release's names, lower case
        return f"Microdados Censo Escolar 2021 (republicação)/DADOS/{base}", data

    renamed = _rewrite(tables / "microdados_censo_escolar_2021_.zip", tmp_path / "microdados_censo_escolar_2021.zip", rename)
    assert ingest.read_census_zip(renamed, 2021).equals(original)


def test_derived_offer_flags_equal_the_published_ones_on_every_one_table_year(small_census, tmp_path):
    raw, _ = small_census
    checked = 0
    for year in range(2011, catalog.SINGLE_TABLE_LAST_YEAR + 1):
        frame = ingest.read_census_zip(raw / catalog.zip_name(year), year)  # the flags as published
        active = frame.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == catalog.SITUATION_ACTIVE)
        derived = active.select(catalog.offer_flag(s) for s in catalog.STAGES)
        for stage in catalog.STAGES:
            assert active[stage.flag].equals(derived[stage.flag]), (year, stage.flag)
            checked += active.height
    assert checked > 10 * 400 * len(catalog.STAGES)


def test_high_school_grades_from_the_tracks_and_blank_stays_blank():
    """2023-2024 headers: grade g = PROP_g + CT_g + NM_g; a blank track adds nothing, all blank is null."""
    header = catalog.columns_for_year(2023)
    sources = catalog.grade_sources(header)
    assert sources["QT_MAT_MED_2"] == ("QT_MAT_MED_PROP_2", "QT_MAT_MED_CT_2", "QT_MAT_MED_NM_2")
    assert sources["QT_MAT_FUND_AI_1"] == ("QT_MAT_FUND_AI_1",) and "QT_MAT_MED_1" in catalog.grade_sources(
        catalog.REPUBLICATION.header("Matricula"))
    assert catalog.grade_sources(catalog.columns_for_year(2022)) == {}
    tracks = pl.DataFrame({"QT_MAT_MED_PROP_2": [10, None, None], "QT_MAT_MED_CT_2": [5, 4, None],
                           "QT_MAT_MED_NM_2": [1, None, None]}, schema_overrides={c: pl.Int32 for c in sources["QT_MAT_MED_2"]})
    assert tracks.select(layouts._added(sources["QT_MAT_MED_2"])).to_series().to_list() == [16, 4, None]


def test_school_missing_from_a_count_table(both_layouts, tmp_path, caplog):
    """Absent from every count table: no activity, counts 0. In Turma but not in Matricula:
    its enrollment is unknown (null) and its stage flags 0; the log counts such schools."""
    single, tables = both_layouts
    src = tables / "microdados_censo_escolar_2021_.zip"
    full = ingest.read_census_zip(src, 2021)
    busy = full.filter((pl.col("TP_SITUACAO_FUNCIONAMENTO") == 1) & (pl.col("QT_MAT_BAS") > 0))
    gone, turma_only = busy["CO_ENTIDADE"][0], busy["CO_ENTIDADE"][1]

    def drop(name: str, data: bytes):
        if "Tabela_Matricula" in name:
            return name, _edit_csv(data, lambda f: f.filter(~pl.col("CO_ENTIDADE").is_in([str(gone), str(turma_only)])))
        if "Tabela_Turma" in name or "Tabela_Docente" in name:
            return name, _edit_csv(data, lambda f: f.filter(pl.col("CO_ENTIDADE") != str(gone)))
        return name, data

    path = _rewrite(src, tmp_path / "microdados_censo_escolar_2021_.zip", drop)
    with caplog.at_level(logging.INFO):
        frame = ingest.read_census_zip(path, 2021)
    row = {r["CO_ENTIDADE"]: r for r in frame.filter(pl.col("CO_ENTIDADE").is_in([gone, turma_only])).iter_rows(named=True)}
    assert row[gone]["QT_MAT_BAS"] == 0 and row[gone]["QT_TUR_BAS"] == 0 and row[gone]["IN_FUND"] == 0
    assert row[turma_only]["QT_MAT_BAS"] is None and row[turma_only]["QT_TUR_BAS"] > 0
    assert all(row[turma_only][s.flag] == 0 for s in catalog.STAGES)
    assert "1 active school(s) absent from Tabela_Matricula but present in another count table" in caplog.text
    unchanged = frame.filter(~pl.col("CO_ENTIDADE").is_in([gone, turma_only]))
    assert unchanged.equals(full.filter(~pl.col("CO_ENTIDADE").is_in([gone, turma_only])))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("drop Docente", r"multi-table layout without table\(s\) Tabela_Docente_2021"),
        ("drop column QT_TUR_MED", r"Tabela_Turma_2021_V2\.csv, year 2021: required column\(s\) missing from the header: QT_TUR_MED"),
        (
            "stranger in Matricula",
            r"Tabela_Matricula_2021_V2\.csv, year 2021: column CO_ENTIDADE: 1 school\(s\) of Tabela_Matricula are not in "
            r"Tabela_Escola \(e\.g\. \[99999999\]\)",
        ),
        ("twice in Turma", r"Tabela_Turma_2021_V2\.csv, year 2021: column CO_ENTIDADE: 1 school\(s\) appear more than once"),
    ],
)
def test_damaged_tables_are_clear_errors_and_other_years_stay_cached(both_layouts, tmp_path, damage, message):
    _, tables = both_layouts
    raw = tmp_path / "raw"
    raw.mkdir()
    for year in (2019, 2020):
        (raw / catalog.zip_name(year)).write_bytes((tables / catalog.zip_name(year)).read_bytes())
    ingest.ingest(raw, tmp_path / "cache", [2019, 2020]).raise_for_failures()
    before = {y: ingest.cache_path(tmp_path / "cache", y).read_bytes() for y in (2019, 2020)}

    def change(name: str, data: bytes):
        if damage == "drop Docente" and "Tabela_Docente" in name:
            return None
        if damage == "drop column QT_TUR_MED" and "Tabela_Turma" in name:
            return name, _edit_csv(data, lambda f: f.drop("QT_TUR_MED"))
        if damage == "stranger in Matricula" and "Tabela_Matricula" in name:
            return name, _edit_csv(data, lambda f: pl.concat([f, f.head(1).with_columns(pl.lit("99999999").alias("CO_ENTIDADE"))]))
        if damage == "twice in Turma" and "Tabela_Turma" in name:
            return name, _edit_csv(data, lambda f: pl.concat([f, f.head(1)]))
        return name, data

    bad = _rewrite(tables / "microdados_censo_escolar_2021_.zip", raw / "microdados_censo_escolar_2021_.zip", change)
    report = ingest.ingest(raw, tmp_path / "cache", [2019, 2020, 2021], force=True)
    assert list(report.failed) == [2021] and report.written == [2019, 2020]
    assert str(bad) in report.failed[2021] and "2021" in report.failed[2021]
    with pytest.raises(IngestError, match=message):
        ingest.read_census_zip(bad, 2021)
    assert {y: ingest.cache_path(tmp_path / "cache", y).read_bytes() for y in (2019, 2020)} == before
    assert not ingest.cache_path(tmp_path / "cache", 2021).exists()


def test_a_zip_with_both_layouts_is_refused(both_layouts, tmp_path):
    single, tables = both_layouts
    with zipfile.ZipFile(single / "microdados_censo_escolar_2021.zip") as zf:
        one = [(i.filename, zf.read(i)) for i in zf.infolist() if "microdados_ed_basica_2021.csv" in i.filename]

    def add(name: str, data: bytes):
        return name, data

    path = _rewrite(tables / "microdados_censo_escolar_2021_.zip", tmp_path / "microdados_censo_escolar_2021.zip", add)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(*one[0])
    with pytest.raises(IngestError, match="holds both layouts for 2021"):
        ingest.read_census_zip(path, 2021)


def test_a_republication_supersedes_the_first_release_in_the_raw_folder(both_layouts, tmp_path):
    single, tables = both_layouts
    (tmp_path / "microdados_censo_escolar_2021.zip").write_bytes((single / "microdados_censo_escolar_2021.zip").read_bytes())
    (tmp_path / "microdados_censo_escolar_2021_.zip").write_bytes((tables / "microdados_censo_escolar_2021_.zip").read_bytes())
    (tmp_path / "microdados_censo_escolar_2020.zip").write_bytes((single / "microdados_censo_escolar_2020.zip").read_bytes())
    found = ingest.raw_zips(tmp_path)
    assert {y: Path(p).name for y, p in found.items()} == {
        2020: "microdados_censo_escolar_2020.zip", 2021: "microdados_censo_escolar_2021_.zip"}


@pytest.mark.slow
def test_a_run_gives_the_same_results_whichever_layout_the_last_years_came_in(tmp_path):
    """The same census with 2024-2025 in tables and with every year in one table: the same
    validation results and the same 2026 forecast (offer flags derived versus published)."""
    from censo_forecast import pipeline
    from censo_forecast.config import load_settings
    from conftest import FAST_RUN

    years = list(range(2011, 2026))
    outs = {}
    for name, tables_from in (("tables", 2024), ("single", 2026)):
        raw = tmp_path / name / "raw"
        synthetic.generate(raw, synthetic.SynthSettings(years, schools=300, seed=17, tables_from=tables_from))
        outs[name] = tmp_path / name / "out"
        pipeline.run(load_settings(None, raw_dir=raw, cache_dir=tmp_path / name / "cache", out_dir=outs[name],
                                   **{**FAST_RUN, "stages": ["IN_FUND_AI", "IN_MED"]}))
    assert sorted(p.name for p in (tmp_path / "tables" / "raw").glob("*202[45]*.zip")) == [
        "microdados_censo_escolar_2024_.zip", "microdados_censo_escolar_2025_.zip"]
    for file in ("resultados_finais.csv", "cobertura_intervalos_cv.csv", "previsoes_2026.csv", "previsoes_2026_ufs.csv"):
        assert pl.read_csv(outs["tables"] / file).equals(pl.read_csv(outs["single"] / file)), file
    assert pl.read_parquet(outs["tables"] / "cv_predictions.parquet").equals(pl.read_parquet(outs["single"] / "cv_predictions.parquet"))
