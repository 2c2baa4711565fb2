"""The synthetic census must look and behave like INEP's files."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import polars as pl
import pytest

from censo_forecast.inep import catalog, synthetic


def _csv(raw, year) -> bytes:
    with zipfile.ZipFile(raw / catalog.zip_name(year)) as zf:
        (name,) = [n for n in zf.namelist() if catalog.data_member_re(year).search(n)]
        return zf.read(name)


def _frame(raw, year) -> pl.DataFrame:
    text = _csv(raw, year).decode("latin-1")
    return pl.read_csv(text.encode(), separator=";", infer_schema=False, quote_char=None)


def test_same_seed_gives_byte_identical_zips(tmp_path):
    settings = synthetic.SynthSettings(years=[2021, 2022, 2023], schools=120, seed=5)
    synthetic.generate(tmp_path / "a", settings)
    synthetic.generate(tmp_path / "b", settings)
    other = synthetic.SynthSettings(years=[2021, 2022, 2023], schools=120, seed=6)
    synthetic.generate(tmp_path / "c", other)
    for year in (2021, 2022, 2023):
        a = (tmp_path / "a" / catalog.zip_name(year)).read_bytes()
        assert a == (tmp_path / "b" / catalog.zip_name(year)).read_bytes()
        assert a != (tmp_path / "c" / catalog.zip_name(year)).read_bytes()


def test_headers_are_the_real_ones_in_order(small_census):
    raw, _ = small_census
    for year in (2011, 2020, 2022, 2023, 2024):
        header = _csv(raw, year).split(b"\n", 1)[0].decode("ascii").split(";")
        assert tuple(header) == catalog.columns_for_year(year)


def test_zip_layout_per_year(small_census):
    raw, _ = small_census
    with zipfile.ZipFile(raw / catalog.zip_name(2020)) as zf:
        names = zf.namelist()
        assert "microdados_ed_basica_2020/dados/microdados_ed_basica_2020.CSV" in names
        md5_line = zf.read("microdados_ed_basica_2020/dados/md5_microdados_ed_basica_2020.txt").decode()
        data = zf.read("microdados_ed_basica_2020/dados/microdados_ed_basica_2020.CSV")
        assert md5_line.split()[0] == hashlib.md5(data).hexdigest()
        assert md5_line.split()[1] == "*microdados_ed_basica_2020.csv"  # letter case differs, as INEP's
    with zipfile.ZipFile(raw / catalog.zip_name(2022)) as zf:
        data_name = [n for n in zf.namelist() if n.lower().endswith("microdados_ed_basica_2022.csv")][0]
        # stored without the UTF-8 flag, so Python decodes the accented folder as cp437: garbled
        assert data_name.startswith("Microdados do Censo Escolar da Educa")
        assert "Educação" not in data_name
        assert not zf.getinfo(data_name).flag_bits & 0x800
    with zipfile.ZipFile(raw / catalog.zip_name(2023)) as zf:
        names = zf.namelist()
        assert "microdados_censo_escolar_2023/dados/suplemento_cursos_tecnicos_2023.csv" in names
        assert any(n.endswith(".pdf") and "/leia-me/" in n for n in names)


def test_dialect_encoding_blanks_and_dates(small_census):
    raw, _ = small_census
    data = _csv(raw, 2023)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # latin-1, as INEP's
    assert b"\r\n" not in data and b'"' not in data
    old, new = _frame(raw, 2015), _frame(raw, 2023)
    inactive_old = old.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") != "1")
    inactive_new = new.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") != "1")
    assert inactive_old.height > 0 and inactive_new.height > 0
    assert set(inactive_old["QT_MAT_FUND_AI"].to_list()) == {"0"}  # missing written as 0 before 2022
    assert inactive_new["QT_MAT_FUND_AI"].null_count() == inactive_new.height  # blank from 2022
    assert new["DT_ANO_LETIVO_INICIO"].drop_nulls().str.contains(r"^\d\d[A-Z]{3}23:00:00:00$").all()
    assert old["DT_ANO_LETIVO_INICIO"].drop_nulls().str.contains(r"^\d\d[A-Z]{3}2015:00:00:00$").all()
    assert any(not name.isascii() for name in new["NO_UF"].unique()), "accented names (Pará, Maranhão...) survive"


def test_schools_nested_in_municipalities_and_states(small_census):
    raw, _ = small_census
    df = _frame(raw, 2018).select("CO_UF", "CO_MUNICIPIO", "CO_ENTIDADE", "TP_DEPENDENCIA", "TP_LOCALIZACAO")
    assert (df["CO_ENTIDADE"].str.len_chars() == 8).all()
    assert (df["CO_MUNICIPIO"].str.len_chars() == 7).all()
    assert (df["CO_ENTIDADE"].str.slice(0, 2) == df["CO_UF"]).all()
    assert (df["CO_MUNICIPIO"].str.slice(0, 2) == df["CO_UF"]).all()
    assert set(df["TP_DEPENDENCIA"]) >= {"2", "3", "4"}
    assert set(df["TP_LOCALIZACAO"]) == {"1", "2"}


def test_school_life_cycle_and_consistency(small_census):
    raw, _ = small_census
    frames = {y: _frame(raw, y) for y in (2016, 2017, 2018, 2019)}
    codes = {y: set(f["CO_ENTIDADE"]) for y, f in frames.items()}
    assert codes[2017] - codes[2016], "new schools open"
    assert codes[2016] - codes[2019], "closed schools disappear"
    f = frames[2018].filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == "1").select(
        pl.col(c).cast(pl.Int64) for c in ("QT_MAT_FUND_AI", "QT_TUR_FUND_AI", "QT_DOC_FUND_AI", "IN_FUND_AI")
    )
    with_pupils = f.filter(pl.col("QT_MAT_FUND_AI") > 0)
    assert (with_pupils["QT_TUR_FUND_AI"] >= 1).all() and (with_pupils["QT_DOC_FUND_AI"] >= 1).all()
    assert (with_pupils["IN_FUND_AI"] == 1).all()
    assert (f.filter(pl.col("QT_MAT_FUND_AI") == 0)["QT_TUR_FUND_AI"] == 0).all()
    size = with_pupils["QT_MAT_FUND_AI"] / with_pupils["QT_TUR_FUND_AI"]
    assert 5 < size.median() < 40


def test_cohort_flow_links_stages(tmp_path):
    """Last year's final early-elementary grade feeds this year's final-years entry."""
    sim = synthetic.CensusSimulator(synthetic.SynthSettings(years=list(range(2011, 2016)), schools=3000, seed=2))
    sim.initialise(2011)
    sim.step(2012)
    before = sim.grades_FUND_AI[: sim.n, -1].copy()
    both = sim.offers_FUND_AI[: sim.n] & sim.offers_FUND_AF[: sim.n] & (sim.status[: sim.n] == 1)
    sim.step(2013)
    entry = sim.grades_FUND_AF[: sim.n, 0]
    keep = both[: len(before)] & sim.offers_FUND_AF[: len(before)]
    corr = np.corrcoef(before[keep], entry[: len(before)][keep])[0, 1]
    assert corr > 0.6


def test_placebo_changes_do_not_depend_on_the_past(tmp_path):
    """In the placebo census, last year's change says nothing about this year's."""
    def lagged_change_corr(placebo: bool) -> float:
        sim = synthetic.CensusSimulator(synthetic.SynthSettings(list(range(2011, 2016)), schools=3000, seed=4, placebo=placebo))
        sim.initialise(2011)
        totals = []
        for year in range(2012, 2016):
            sim.step(year)
            totals.append(sim.grades_FUND_AI[:3000].sum(axis=1).astype(float))
        a, b, c = totals[-3], totals[-2], totals[-1]
        ok = (a > 20) & (b > 20) & (c > 20)
        return np.corrcoef(np.log(b[ok] / a[ok]), np.log(c[ok] / b[ok]))[0, 1]

    assert abs(lagged_change_corr(True)) < 0.1
    assert lagged_change_corr(False) > 0.2  # the real-like census has momentum (observed +0.39)


def test_placebo_persistence_is_the_best_constant_forecast_at_every_horizon():
    """The MAE-best multiple of a school's enrollment h years on (the enrollment-weighted
    median of its ratio, closures and dropped offers counted as 0) is 1: nothing but leakage
    can beat persistence per school. With the old mean log change (-0.01) it fell to 0.90
    five years ahead, a common shift the learners then estimated more closely than Deriva."""
    sim = synthetic.CensusSimulator(synthetic.SynthSettings(list(range(2011, 2018)), schools=20_000, seed=1, placebo=True))
    sim.initialise(2011)
    series = []
    for year in range(2012, 2018):
        sim.step(year)
        series.append(sim.grades_FUND_AI.sum(axis=1).astype(float))
    start = series[0]
    ok = start > 0
    for h in range(1, 6):
        ratio, weight = series[h][: len(start)][ok] / start[ok], start[ok]
        order = np.argsort(ratio)
        cumulative = np.cumsum(weight[order])
        best = ratio[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
        assert abs(best - 1) <= 0.02, (h, best)


@pytest.mark.slow
def test_full_scale_totals_track_national_figures():
    """At ~180k active schools the simulated trajectory lands on the published totals."""
    sim = synthetic.CensusSimulator(synthetic.SynthSettings(list(range(2011, 2025)), schools=180_000, seed=1))
    sim.initialise(2011)
    published = {
        2020: {"FUND_AI": 14.79, "FUND_AF": 11.93, "MED": 7.55},
        2023: {"INF_CRE": 4.1, "INF_PRE": 5.3, "FUND_AI": 14.4, "FUND_AF": 11.6, "MED": 7.6},
    }
    for year in range(2012, 2025):
        sim.step(year)
        if year in published:
            active = np.flatnonzero(sim.status[: sim.n] == 1)
            assert 170_000 < len(active) < 190_000
            counts = sim.stage_counts(active)
            for suffix, millions in published[year].items():
                assert counts[suffix]["MAT"].sum() / 1e6 == pytest.approx(millions, rel=0.06), (year, suffix)
            total = sum(counts[s]["MAT"].sum() for s in ("INF_CRE", "INF_PRE", "FUND", "MED", "PROF_TEC", "EJA_FUND", "EJA_MED", "ESP_CE"))
            assert 44e6 < total < 50e6


def _tables(path, year=2025) -> dict[str, pl.DataFrame]:
    with zipfile.ZipFile(path) as zf:
        found = {}
        for name in zf.namelist():
            base = name.rsplit("/", 1)[-1]
            if base.startswith("Tabela_"):
                table = base.removeprefix("Tabela_").rsplit(f"_{year}", 1)[0]
                found[table] = (name, pl.read_csv(zf.read(name), separator=";", infer_schema=False, quote_char=None,
                                                   encoding="latin-1"))
        return found


def test_2025_is_written_as_inep_republished_it(small_census):
    raw, _ = small_census
    path = raw / "microdados_censo_escolar_2025_.zip"
    assert path.exists() and not (raw / "microdados_censo_escolar_2025.zip").exists()
    tables = _tables(path)
    names = {t: n for t, (n, _) in tables.items()}
    assert names["Escola"] == "microdados_censo_escolar_2025_v2/dados/Tabela_Escola_2025_V2.csv"
    assert names["Gestor_Escolar"].endswith("Tabela_Gestor_Escolar_2025_v2.csv")  # INEP's lower-case v2
    widths = {t: len(f.columns) for t, (_, f) in tables.items()}
    assert (widths["Escola"], widths["Matricula"], widths["Turma"], widths["Docente"]) == (290, 263, 218, 184)
    for table in ("Escola", "Matricula", "Turma", "Docente"):
        frame = tables[table][1]
        assert tuple(frame.columns) == catalog.REPUBLICATION.header(table)
        assert frame.columns[:3] == ["NU_ANO_CENSO", "NO_REGIAO", "CO_REGIAO"] and "CO_ENTIDADE" in frame.columns[:23]
        assert not set(frame.columns) & set(catalog.OFFER_FLAGS)  # INEP's 2025 files have no offer flags
    escola = tables["Escola"][1]
    active = escola.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == "1")
    assert escola.height > active.height > 0
    # count tables: schools with activity only, every count filled (zeros, not blanks)
    matricula = tables["Matricula"][1]
    assert set(matricula["CO_ENTIDADE"]) < set(active["CO_ENTIDADE"])
    counts = [c for c in matricula.columns if c.startswith("QT_")]
    assert matricula.select(counts).null_count().sum_horizontal().item() == 0
    assert (matricula["QT_MAT_BAS"].cast(pl.Int64) > 0).all()
    # Escola: not-applicable fields blank, dates as 03FEB2025:00:00:00
    public = active.filter(pl.col("TP_DEPENDENCIA") != "4")
    assert public["TP_CATEGORIA_ESCOLA_PRIVADA"].null_count() == public.height
    assert escola["CO_ESCOLA_SEDE_VINCULADA"].null_count() == escola.height
    assert active["DT_ANO_LETIVO_INICIO"].str.contains(r"^\d{2}FEB2025:00:00:00$").all()
    inactive = escola.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") != "1")
    assert inactive["IN_AGUA_POTAVEL"].null_count() == inactive.height


def test_grades_add_up_and_cohorts_move_up_a_grade(small_census):
    raw, _ = small_census
    matricula = _tables(raw / "microdados_censo_escolar_2025_.zip")["Matricula"][1].with_columns(
        pl.col(c).cast(pl.Int64) for c in ("CO_ENTIDADE", *[f"QT_MAT_FUND_AI_{g}" for g in range(1, 6)], "QT_MAT_FUND_AI",
                                          *[f"QT_MAT_MED_{g}" for g in (1, 2, 3, 4, "NS")], "QT_MAT_MED"))
    assert matricula.select((pl.sum_horizontal(f"QT_MAT_FUND_AI_{g}" for g in range(1, 6)) == pl.col("QT_MAT_FUND_AI")).all()).item()
    assert matricula.select((pl.sum_horizontal(f"QT_MAT_MED_{g}" for g in (1, 2, 3, 4, "NS")) == pl.col("QT_MAT_MED")).all()).item()
    before = _frame(raw, 2024).filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == "1").select(
        pl.col("CO_ENTIDADE").cast(pl.Int64), *(pl.col(f"QT_MAT_FUND_AI_{g}").cast(pl.Int64).alias(f"g{g}") for g in range(1, 5)))
    both = before.join(matricula, on="CO_ENTIDADE")
    for g in range(1, 5):  # this year's grade g+1 is last year's grade g, less those who left or repeated
        moved = both.filter(pl.col(f"g{g}") > 10)
        ratio = (moved[f"QT_MAT_FUND_AI_{g + 1}"] / moved[f"g{g}"]).median()
        assert 0.85 < ratio <= 1.0, (g, ratio)
        assert (moved[f"QT_MAT_FUND_AI_{g + 1}"] <= moved[f"g{g}"]).all()


def test_first_release_option(tmp_path):
    synthetic.generate(tmp_path, synthetic.SynthSettings([2024, 2025], schools=80, seed=3, first_release=True))
    assert sorted(p.name for p in tmp_path.glob("*.zip")) == ["microdados_censo_escolar_2024.zip", "microdados_censo_escolar_2025.zip"]
    tables = _tables(tmp_path / "microdados_censo_escolar_2025.zip")
    assert tables["Escola"][0] == "microdados_censo_escolar_2025/dados/Tabela_Escola_2025.csv"
    assert len(tables["Escola"][1].columns) == 302 and "LATITUDE" in tables["Escola"][1].columns
    assert "QT_MAT_MED_1" not in tables["Matricula"][1].columns and "QT_MAT_MED_PROP_1" in tables["Matricula"][1].columns
    from censo_forecast.inep import ingest  # the first release ingests too: grades from its four tracks

    frame = ingest.read_census_zip(tmp_path / "microdados_censo_escolar_2025.zip", 2025).filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == 1)
    assert frame["QT_MAT_MED_1"].null_count() == 0 and frame["QT_MAT_MED_1"].sum() > 0
    assert frame.select((pl.sum_horizontal(f"QT_MAT_MED_{g}" for g in (1, 2, 3, 4, "NS")) == pl.col("QT_MAT_MED")).all()).item()
