import pytest

from censo_forecast.inep import catalog


@pytest.mark.parametrize(
    "name, year",
    [
        ("microdados_ed_basica_2019/dados/microdados_ed_basica_2019.csv", 2019),
        ("microdados_ed_basica_2020/dados/microdados_ed_basica_2020.CSV", 2020),
        # 2022's folder as Python decodes INEP's cp437 names without the UTF-8 flag
        ("Microdados do Censo Escolar da Educa├º├úo B├ísica 2022/dados/microdados_ed_basica_2022.csv", 2022),
        ("microdados_censo_escolar_2023/dados/MICRODADOS_ED_BASICA_2023.csv", 2023),
        ("microdados_ed_basica_2023.csv", 2023),
    ],
)
def test_data_member_found_by_base_name(name, year):
    assert catalog.data_member_re(year).search(name)


@pytest.mark.parametrize(
    "name",
    [
        "microdados_censo_escolar_2023/dados/suplemento_cursos_tecnicos_2023.csv",
        "microdados_censo_escolar_2023/dados/md5_microdados_ed_basica_2023.txt",
        "microdados_censo_escolar_2023/dados/microdados_ed_basica_2022.csv",
        "microdados_censo_escolar_2023/dados/xmicrodados_ed_basica_2023.csv",
    ],
)
def test_other_members_are_not_the_data_file(name):
    assert not catalog.data_member_re(2023).search(name)


def test_real_column_sets_by_year():
    assert len(catalog.columns_for_year(2011)) == 370
    assert catalog.columns_for_year(2015) == catalog.columns_for_year(2021)
    assert len(catalog.columns_for_year(2022)) == 385
    assert len(catalog.columns_for_year(2023)) == 408
    assert len(catalog.columns_for_year(2024)) == 426
    assert "QT_MAT_FUND_AI_1" in catalog.columns_for_year(2023)
    assert "QT_MAT_FUND_AI_1" not in catalog.columns_for_year(2022)


def test_every_stage_column_exists_in_every_year():
    for year in (2011, 2021, 2022, 2023, 2024):
        header = set(catalog.columns_for_year(year))
        for stage in catalog.STAGES:
            assert set(stage.columns) <= header, (year, stage.flag)
        assert set(catalog.REQUIRED_COLUMNS) <= header


def test_stage_table_is_exact():
    med = catalog.stage("IN_MED")
    assert med.columns == ("IN_MED", "QT_MAT_MED", "QT_DOC_MED", "QT_TUR_MED")
    assert [s.flag for s in catalog.STAGES] == [
        "IN_INF_CRE", "IN_INF_PRE", "IN_FUND", "IN_FUND_AI", "IN_FUND_AF",
        "IN_MED", "IN_PROF_TEC", "IN_EJA_FUND", "IN_EJA_MED", "IN_ESP_CE",
    ]
    assert catalog.stage("IN_FUND_AF").feeder == "IN_FUND_AI"
    with pytest.raises(ValueError, match="unknown stage 'IN_XYZ'"):
        catalog.stage("IN_XYZ")


def test_parse_years_and_stages():
    assert catalog.parse_years("2011-2013,2015") == [2011, 2012, 2013, 2015]
    assert catalog.parse_years("all", available=[2020, 2019]) == [2019, 2020]
    with pytest.raises(ValueError, match="backwards"):
        catalog.parse_years("2015-2011")
    with pytest.raises(ValueError, match="out of range"):
        catalog.parse_years("1990")
    assert catalog.parse_stages("in_med, IN_FUND_AI") == ["IN_MED", "IN_FUND_AI"]
    with pytest.raises(ValueError):
        catalog.parse_stages("IN_NOPE")


def test_listing_links_and_urls():
    html = 'href="x/microdados_censo_escolar_2023.zip" href="y/microdados_censo_escolar_2025_.zip"'
    found = [(int(m.group(1)), m.group(2)) for m in catalog.LISTING_LINK_RE.finditer(html)]
    assert found == [(2023, ""), (2025, "_")]
    assert catalog.zip_url(2019, "http://127.0.0.1:9/m") == "http://127.0.0.1:9/m/microdados_censo_escolar_2019.zip"


@pytest.mark.parametrize("name, table", [
    ("microdados_censo_escolar_2025_v2/dados/Tabela_Escola_2025_V2.csv", "Escola"),
    ("microdados_censo_escolar_2025/dados/Tabela_Matricula_2025.csv", "Matricula"),
    ("X/DADOS/tabela_turma_2025_v2.CSV", "Turma"),
    ("Tabela_Docente_2025.csv", "Docente"),
])
def test_table_members_found_by_base_name(name, table):
    assert catalog.table_member_re(table, 2025).search(name)
    assert not catalog.table_member_re(table, 2024).search(name)
    assert [t for t in catalog.TABLES if catalog.table_member_re(t, 2025).search(name)] == [table]


def test_zip_names_and_releases():
    assert catalog.parse_zip_name("microdados_censo_escolar_2025_.zip") == (2025, True)
    assert catalog.parse_zip_name("microdados_censo_escolar_2021.zip") == (2021, False)
    assert catalog.parse_zip_name("microdados_censo_escolar_2021.zip.part") is None
    assert catalog.zip_url(2025, "https://x/d/", republished=True) == "https://x/d/microdados_censo_escolar_2025_.zip"
    assert (
        catalog.REPUBLICATION.member("Gestor_Escolar", 2025) == "microdados_censo_escolar_2025_v2/dados/Tabela_Gestor_Escolar_2025_v2.csv"
    )
    assert catalog.FIRST_RELEASE.member("Escola", 2025) == "microdados_censo_escolar_2025/dados/Tabela_Escola_2025.csv"
    assert len(catalog.REPUBLICATION.header("Escola")) == 290 and len(catalog.FIRST_RELEASE.header("Escola")) == 302


def test_each_cache_column_lives_in_one_table_of_2025():
    """Every column the cache reads is in the table `table_of` names (V2 headers), offer flags in none."""
    headers = {t: set(catalog.REPUBLICATION.header(t)) for t in catalog.TABLES}
    identification = set(catalog.REPUBLICATION.header("Escola")[:23])  # in all four tables
    for column in catalog.CACHE_SCHEMA:
        if column in catalog.OFFER_FLAGS or column in identification:
            continue
        assert [t for t, h in headers.items() if column in h] == [catalog.table_of(column)], column
    assert not set(catalog.OFFER_FLAGS) & set().union(*headers.values())
