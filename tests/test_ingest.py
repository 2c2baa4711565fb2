"""Ingest: round trip, real-file quirks, skipping unchanged years, and clear errors."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import zipfile

import polars as pl
import pytest

from censo_forecast.inep import catalog, ingest, synthetic
from conftest import FIXTURES


def _active(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") == catalog.SITUATION_ACTIVE)


def test_round_trip_matches_generator_totals(small_census, tmp_path):
    raw, truths = small_census
    report = ingest.ingest(raw, tmp_path / "cache")
    assert report.written == sorted(truths) and not report.failed
    for year, per_stage in truths.items():
        frame = _active(pl.read_parquet(ingest.cache_path(tmp_path / "cache", year)))
        for stage in catalog.STAGES:
            got = frame.select(
                pl.col(stage.enrollment).sum(), pl.col(stage.teachers).sum(), pl.col(stage.classes).sum(), pl.col(stage.flag).sum()
            ).row(0)
            want = per_stage[stage.flag]
            assert got == (want["enrollment"], want["teachers"], want["classes"], want["schools"]), (year, stage.flag)


def test_cache_has_inep_names_and_small_types(small_census, tmp_path):
    raw, _ = small_census
    ingest.ingest(raw, tmp_path / "cache", [2019, 2023])
    for year in (2019, 2023):
        frame = pl.read_parquet(ingest.cache_path(tmp_path / "cache", year))
        assert frame.schema == pl.Schema(catalog.CACHE_SCHEMA)
        assert frame["DT_ANO_LETIVO_INICIO"].drop_nulls().dt.year().unique().to_list() == [year]
        # a school that is not active has unknown counts and flags in every year (INEP wrote 0
        # up to 2021 and blanks since), so no year or layout differs there
        inactive = frame.filter(pl.col("TP_SITUACAO_FUNCIONAMENTO") != 1)
        assert inactive.height > 0
        for column in ("QT_MAT_FUND_AI", "IN_FUND_AI", "QT_DOC_MED", "QT_MAT_BAS", "QT_MAT_FUND_AI_1"):
            assert inactive[column].null_count() == inactive.height, (year, column)
        assert _active(frame)["QT_MAT_FUND_AI"].null_count() == 0
    assert frame["IN_INTERNET"].is_in([9]).any(), "INEP's 'not informed' (9) is kept, not mangled"


def test_per_grade_counts_under_one_set_of_names(small_census, tmp_path):
    """From 2023 grades add up to their stage (high school: the tracks' grades summed); before, null."""
    raw, _ = small_census
    ingest.ingest(raw, tmp_path / "cache", [2022, 2023, 2024])
    for year in (2022, 2023, 2024):
        frame = _active(pl.read_parquet(ingest.cache_path(tmp_path / "cache", year)))
        grades = {"FUND_AI": range(1, 6), "FUND_AF": range(6, 10), "MED": [1, 2, 3, 4, "NS"]}
        for stage, numbers in grades.items():
            columns = [f"QT_MAT_{stage}_{g}" for g in numbers]
            if year < 2023:
                assert all(frame[c].null_count() == frame.height for c in columns), (year, stage)
                continue
            summed = frame.select(pl.sum_horizontal(columns)).to_series()
            assert (summed == frame[f"QT_MAT_{stage}"]).all(), (year, stage)
            assert frame[columns[0]].sum() > 0


def test_real_niteroi_extract_with_spreadsheet_damage(make_year_zip, tmp_path):
    """A real 2023 extract re-saved by a spreadsheet: CRLF and mangled CNPJs in skipped columns."""
    csv_bytes = (FIXTURES / "niteroi_2023_extract.csv").read_bytes()
    assert b"\r\n" in csv_bytes and b"E+13" in csv_bytes
    frame = ingest.read_census_zip(make_year_zip(2023, csv_bytes), 2023)
    assert frame.height == 13
    by_code = {row["CO_ENTIDADE"]: row for row in frame.iter_rows(named=True)}
    curumim = by_code[33055149]  # counts read by hand from the CSV line
    assert (curumim["QT_MAT_FUND_AI"], curumim["QT_DOC_FUND_AI"], curumim["QT_TUR_FUND_AI"], curumim["QT_MAT_BAS"]) == (125, 13, 5, 235)
    assert curumim["TP_DEPENDENCIA"] == 4 and curumim["CO_MUNICIPIO"] == 3303302 and curumim["CO_UF"] == 33
    assert curumim["DT_ANO_LETIVO_INICIO"] == dt.date(2023, 2, 7)
    assert curumim["NO_MUNICIPIO"] == "Niterói"
    aurelino = by_code[33055610]
    assert (aurelino["IN_MED"], aurelino["QT_MAT_MED"], aurelino["QT_DOC_MED"]) == (1, 245, 38)
    ceja = by_code[33055300]
    assert ceja["QT_MAT_BAS"] == 3544
    paralysed = by_code[33055475]
    assert paralysed["TP_SITUACAO_FUNCIONAMENTO"] == 2
    assert paralysed["QT_MAT_MED"] is None and paralysed["IN_MED"] is None
    assert paralysed["NO_ENTIDADE"] == "CIEP BRIZOLAO 049 PROFESSOR ANISIO TEIXEIRA"


def _small_csv(year: int, schools: int = 30) -> bytes:
    sim = synthetic.CensusSimulator(synthetic.SynthSettings([year], schools=schools, seed=1))
    sim.initialise(year)
    frame, _ = sim.render(year)
    return synthetic.frame_to_csv_bytes(frame)


def test_optional_columns_missing_become_null(make_year_zip):
    frame = pl.read_csv(_small_csv(2021), separator=";", infer_schema=False, encoding="latin-1", quote_char=None)
    trimmed = frame.drop("QT_MAT_BAS_0_3", "IN_INTERNET", "DT_ANO_LETIVO_INICIO")
    out = ingest.read_census_zip(make_year_zip(2021, synthetic.frame_to_csv_bytes(trimmed)), 2021)
    assert out["QT_MAT_BAS_0_3"].null_count() == out.height
    assert out["IN_INTERNET"].dtype == pl.Int8 and out["IN_INTERNET"].null_count() == out.height
    assert out["QT_MAT_MED"].null_count() == 0


# ------------------------------------------------------------------ malformed input
def test_truncated_zip_is_a_clear_error(make_year_zip, tmp_path):
    path = make_year_zip(2019, _small_csv(2019))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ingest.IngestError, match=r"microdados_censo_escolar_2019\.zip.*(truncated|corrupt|damaged)"):
        ingest.ingest_year(path, 2019, tmp_path / "cache")


def test_corrupt_member_is_a_clear_error(make_year_zip, tmp_path):
    path = make_year_zip(2019, _small_csv(2019))
    with zipfile.ZipFile(path) as zf:
        info = [i for i in zf.infolist() if i.filename.endswith(".csv") and "dados/micro" in i.filename][0]
    data = bytearray(path.read_bytes())
    middle = info.header_offset + 100 + info.compress_size // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(
        ingest.IngestError, match=r"member microdados_ed_basica_2019/dados/microdados_ed_basica_2019\.csv, year 2019.*damaged"
    ):
        ingest.read_census_zip(path, 2019)


def test_zip_without_data_member(tmp_path):
    path = tmp_path / "microdados_censo_escolar_2018.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("microdados_ed_basica_2018/leia-me/leia-me.pdf", b"%PDF")
    with pytest.raises(ingest.IngestError, match=r"year 2018: .*microdados_censo_escolar_2018\.zip: no data CSV for 2018"):
        ingest.read_census_zip(path, 2018)


def test_required_column_missing(make_year_zip):
    frame = pl.read_csv(_small_csv(2022), separator=";", infer_schema=False, encoding="latin-1", quote_char=None)
    path = make_year_zip(2022, synthetic.frame_to_csv_bytes(frame.drop("QT_MAT_MED")))
    with pytest.raises(ingest.IngestError, match=r"year 2022: required column\(s\) missing from the header: QT_MAT_MED"):
        ingest.read_census_zip(path, 2022)


def test_unparsable_value_in_required_column_names_the_line(make_year_zip):
    lines = _small_csv(2017).split(b"\n")
    header = lines[0].decode().split(";")
    col = header.index("QT_MAT_FUND_AI")
    row = lines[5].split(b";")
    row[col] = b"2,85E+13"
    lines[5] = b";".join(row)
    path = make_year_zip(2017, b"\n".join(lines))
    with pytest.raises(ingest.IngestError, match=r"year 2017: required column QT_MAT_FUND_AI, line 6: cannot read '2,85E\+13'"):
        ingest.read_census_zip(path, 2017)


def test_wrong_year_inside_the_file(make_year_zip):
    path = make_year_zip(2016, _small_csv(2015).replace(b"\n2015;", b"\n2016;", 3))
    with pytest.raises(ingest.IngestError, match=r"NU_ANO_CENSO is 2015 on \d+ row\(s\), expected 2016"):
        ingest.read_census_zip(path, 2016)


def test_ragged_rows_are_a_clear_error(make_year_zip):
    lines = _small_csv(2017).split(b"\n")
    lines[3] = lines[3] + b";extra;fields"  # file line 4
    with pytest.raises(ingest.IngestError, match=r"year 2017: line 4 has 372 fields, the header has 370"):
        ingest.read_census_zip(make_year_zip(2017, b"\n".join(lines)), 2017)


def test_a_bad_year_leaves_other_years_cached(small_census, tmp_path):
    raw, _ = small_census
    mixed = tmp_path / "raw"
    mixed.mkdir()
    for year in (2012, 2013, 2014):
        shutil.copy(raw / catalog.zip_name(year), mixed)
    cache = tmp_path / "cache"
    first = ingest.ingest(mixed, cache)
    assert first.written == [2012, 2013, 2014]
    before = ingest.cache_path(cache, 2012).read_bytes()
    (mixed / catalog.zip_name(2013)).write_bytes(b"PK\x03\x04 not really a zip")
    report = ingest.ingest(mixed, cache, [2012, 2013, 2014, 2015])
    assert set(report.failed) == {2013, 2015}
    assert "not a readable zip" in report.failed[2013] and "no microdados_censo_escolar_2015.zip" in report.failed[2015]
    assert report.skipped == [2012, 2014]
    assert ingest.cache_path(cache, 2012).read_bytes() == before
    assert ingest.cache_path(cache, 2013).exists(), "the old good cache of 2013 stays until a good zip replaces it"
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ingest.IngestError, match="2013"):
        report.raise_for_failures()


def test_unchanged_years_are_skipped_and_changed_ones_redone(small_census, tmp_path):
    raw, _ = small_census
    mine = tmp_path / "raw"
    mine.mkdir()
    for year in (2020, 2021):
        shutil.copy(raw / catalog.zip_name(year), mine)
    cache = tmp_path / "cache"
    assert ingest.ingest(mine, cache).written == [2020, 2021]
    second = ingest.ingest(mine, cache)
    assert second.written == [] and second.skipped == [2020, 2021]
    # touched but identical: the content hash says skip
    os.utime(mine / catalog.zip_name(2020), ns=(1, 1))
    assert ingest.ingest(mine, cache).skipped == [2020, 2021]
    # re-issued by INEP: different content, same name -> re-ingested
    synthetic.write_year_zip(mine / catalog.zip_name(2021), 2021, _small_csv(2021, schools=12))
    third = ingest.ingest(mine, cache)
    assert third.written == [2021] and third.skipped == [2020]
    assert pl.read_parquet(ingest.cache_path(cache, 2021)).height < 40


def test_stored_member_is_read_and_a_flipped_byte_fails_its_crc(tmp_path):
    """Stored (uncompressed) members skip inflating, so only the CRC can catch damage."""
    path = tmp_path / "microdados_censo_escolar_2019.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("microdados_ed_basica_2019/dados/microdados_ed_basica_2019.csv", _small_csv(2019))
    assert ingest.read_census_zip(path, 2019).height == pl.read_csv(_small_csv(2019), separator=";", quote_char=None,
                                                                     infer_schema=False, encoding="latin-1").height
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ingest.IngestError, match=r"microdados_ed_basica_2019\.csv, year 2019: .*CRC or size mismatch"):
        ingest.read_census_zip(path, 2019)


def _deflate64_zip(path, year: int, csv_bytes: bytes):
    """A zip whose data member is marked Deflate64 (method 9), which Python cannot read."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"microdados_ed_basica_{year}/dados/microdados_ed_basica_{year}.csv", csv_bytes)
    data = bytearray(path.read_bytes())
    data[8:10] = (9).to_bytes(2, "little")  # local header's method
    central = data.index(b"PK\x01\x02")
    data[central + 10 : central + 12] = (9).to_bytes(2, "little")  # central directory's method
    path.write_bytes(bytes(data))
    return path


def test_unsupported_compression_is_a_clear_error(tmp_path):
    path = _deflate64_zip(tmp_path / "microdados_censo_escolar_2019.zip", 2019, _small_csv(2019))
    with pytest.raises(ingest.IngestError, match=r"year 2019: unsupported zip compression .*re-zip"):
        ingest.read_census_zip(path, 2019)
    with pytest.raises(ingest.archive.ArchiveError, match=r"unsupported zip compression.*microdados_ed_basica_2019\.csv"):
        ingest.archive.verify_zip(path, 2019)  # the downloader's check gives the same clear error


def test_ingest_and_synth_commands(tmp_path):
    from typer.testing import CliRunner

    from censo_forecast.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "raw"), "--years", "2020-2021", "--schools", "30"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.zip")) == [catalog.zip_name(2020), catalog.zip_name(2021)]
    result = runner.invoke(app, ["ingest", "--raw-dir", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0 and "ingested [2020, 2021]" in result.output
    (tmp_path / "raw" / catalog.zip_name(2021)).write_bytes(b"not a zip")
    result = runner.invoke(app, ["ingest", "--raw-dir", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache"), "--years", "2021"])
    assert result.exit_code == 1
    assert "1 year(s) failed" in result.output and "2021:" in result.output and "not a readable zip" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--years", "2011,2013"])
    assert result.exit_code == 2 and "synthetic years must be consecutive" in result.output


def _bomb(path, data: bytes, declare: int | None = None):
    """A one-table year whose data member holds `data`; `declare`: the size its headers claim."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("microdados_ed_basica_2021/dados/microdados_ed_basica_2021.csv", data)
    if declare is not None:  # rewrite the uncompressed size in the local header and the central directory
        raw = bytearray(path.read_bytes())
        local = raw.index(b"PK\x03\x04")
        raw[local + 22:local + 26] = declare.to_bytes(4, "little")
        central = raw.index(b"PK\x01\x02")
        raw[central + 24:central + 28] = declare.to_bytes(4, "little")
        path.write_bytes(bytes(raw))
    return path


def test_zip_bombs_are_refused_before_or_while_inflating(tmp_path):
    from censo_forecast.inep import archive

    honest = _bomb(tmp_path / "microdados_censo_escolar_2021.zip", b"0;" * 2_000_000)  # 4 MB of one pattern
    with pytest.raises(ingest.IngestError, match=r"expands \d+ times \(census tables: about 7, limit 50\); refused"):
        ingest.read_census_zip(honest, 2021)
    with pytest.raises(archive.ArchiveError, match="refused"):
        archive.verify_zip(honest, 2021)  # the downloader's check refuses it too
    header = b"NU_ANO_CENSO;CO_ENTIDADE\n"
    (tmp_path / "liar").mkdir()
    liar = _bomb(tmp_path / "liar" / "microdados_censo_escolar_2021.zip",
                 header + b"2021;1\n" * 300_000, declare=len(header) + 7 * 40)
    with zipfile.ZipFile(liar) as zf:
        info = zf.infolist()[0]
        assert info.file_size == len(header) + 280 and info.file_size / info.compress_size < 50  # passes the ratio check
    with pytest.raises(ingest.IngestError, match="inflates to more than the 305 bytes it declares"):
        ingest.read_census_zip(liar, 2021)
    with pytest.raises(archive.ArchiveError, match="inflates to more than the 305 bytes it declares"):
        archive.verify_zip(liar, 2021)


def test_a_member_declaring_more_than_any_census_table_is_refused(tmp_path, monkeypatch):
    from censo_forecast.inep import archive

    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1000)  # the real limit is 4 GiB; the check is the same
    path = _bomb(tmp_path / "microdados_censo_escolar_2021.zip", bytes(range(256)) * 8)
    with pytest.raises(ingest.IngestError, match="declares 2,048 bytes, beyond the 1,000 of any census table"):
        ingest.read_census_zip(path, 2021)


def test_an_ingest_error_is_printed_once(tmp_path):
    from typer.testing import CliRunner

    from censo_forecast.cli import app

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / catalog.zip_name(2021)).write_bytes(b"not a zip")
    result = CliRunner().invoke(app, ["ingest", "--raw-dir", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and result.output.count("not a readable zip") == 1, result.output


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'{"2020": [1], "2021": "x", "abc": {"sha256": 5}}'])
def test_a_damaged_manifest_is_reported_once_and_rebuilt(small_census, tmp_path, caplog, content):
    raw, _ = small_census
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ingest.MANIFEST).write_bytes(content)
    report = ingest.ingest(raw, cache, [2020, 2021])
    assert report.written == [2020, 2021] and not report.failed
    assert caplog.text.count("ingest manifest") <= 1
    assert ingest.ingest(raw, cache, [2020, 2021], force=True).written == [2020, 2021]  # --force copes too
    assert ingest.ingest(raw, cache, [2020, 2021]).skipped == [2020, 2021]  # rebuilt
    assert ingest.cached_years(cache) == [2020, 2021]
