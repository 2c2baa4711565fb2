"""`demography download` against a local DATASUS on 127.0.0.1: discovery, final over preliminary
files, counting, resume after dropped connections, damaged files, reruns, and the TLS policy."""

from __future__ import annotations

import logging

import polars as pl
import pytest
from typer.testing import CliRunner

import small_disk
from censo_forecast.cli import app
from censo_forecast.demography import download as dd
from censo_forecast.demography import tables
from censo_forecast.demography.ftp import FtpError, FtpOptions
from demography_mirror import ftp_server, popsvs_zip, sinasc_dbc

pytest.importorskip("pyftpdlib")
pytest.importorskip("datasus_dbc")

SINASC = "dissemin/publicos/SINASC"


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "datasus"
    final, prelim = root / SINASC / "NOV" / "DNRES", root / SINASC / "PRELIM" / "DNRES"
    population = root / "dissemin" / "publicos" / "IBGE" / "POPSVS"
    for folder in (final, prelim, population):
        folder.mkdir(parents=True)
    # Alagoas 2015: 3 births in 2700101 (one given with its check digit), 2 in 270020, 1 ignored
    (final / "DNAL2015.dbc").write_bytes(sinasc_dbc(
        [("270010", "01012015"), ("2700101", "02022015"), ("270010", "03032015"), ("270020", "04042015"),
         ("270020", "05052015"), ("", "06062015")]))
    (final / "DNSE2015.dbc").write_bytes(sinasc_dbc([("280030", "07072015")] * 4))
    (prelim / "DNAL2016.dbc").write_bytes(sinasc_dbc([("270010", "01012016")] * 5))
    (prelim / "DNAL2015.dbc").write_bytes(sinasc_dbc([("270010", "01012015")] * 99))  # the final one wins
    rows = [("270010", "2015", sex, f"{age:03d}", str(10 + age)) for sex in "12" for age in (0, 1, 17, 18, 80)]
    (population / "POPSBR15.zip").write_bytes(popsvs_zip(rows, "POPSBR15.zip"))
    return root


def _options(url: str, **kwargs) -> FtpOptions:
    return FtpOptions(url=url, plain=True, retries=kwargs.pop("retries", 5), timeout_s=5, backoff_s=0.01, **kwargs)


def test_births_and_population_are_counted_into_the_documented_format(mirror, tmp_path, caplog):
    out = tmp_path / "demografia"
    with ftp_server(mirror) as url, caplog.at_level(logging.WARNING):
        report = dd.download(out, _options(url), states=["AL", "SE"])
    assert report.ok and sorted(report.downloaded) == ["DNAL2015.dbc", "DNAL2016.dbc", "DNSE2015.dbc", "POPSBR15.zip"]
    assert "no file for 1 state-year(s): SE 2016" in caplog.text  # a state-year without any file is said
    births = pl.read_parquet(out / dd.BIRTHS_FILE)
    counted = {(r["cod_mun6"], r["year"]): (r["live_births"], r["preliminary"]) for r in births.iter_rows(named=True)}
    assert counted == {(270010, 2015): (3, False), (270020, 2015): (2, False), (270000, 2015): (1, False),
                       (280030, 2015): (4, False), (270010, 2016): (5, True)}
    population = pl.read_parquet(out / dd.POPULATION_FILE).sort("age")
    assert population.select("age", "pop").rows() == [(0, 20), (1, 22), (17, 54)]  # both sexes; ages 0-17
    demography = tables.read_folder(out)  # the tables read as --demography reads them
    assert demography.births.filter(pl.col(tables.MUNICIPALITY) == 270000).height == 0  # the ignored row is dropped
    assert demography.births.filter(pl.col(tables.YEAR) == 2016)[tables.PRELIMINARY].all()


def test_a_rerun_fetches_only_what_changed(mirror, tmp_path):
    out = tmp_path / "demografia"
    with ftp_server(mirror) as url:
        dd.download(out, _options(url))
        before = pl.read_parquet(out / dd.BIRTHS_FILE)
        (mirror / SINASC / "NOV" / "DNRES" / "DNSE2015.dbc").write_bytes(sinasc_dbc([("280030", "07072015")] * 6))
        again = dd.download(out, _options(url))
    assert again.downloaded == ["DNSE2015.dbc"] and len(again.unchanged) == 3
    after = pl.read_parquet(out / dd.BIRTHS_FILE)
    assert after.filter(pl.col("cod_mun6") == 280030)["live_births"].item() == 6
    assert after.filter(pl.col("cod_mun6") != 280030).equals(before.filter(pl.col("cod_mun6") != 280030))


def test_dropped_connections_resume_where_they_stopped(mirror, tmp_path, caplog):
    out = tmp_path / "demografia"
    big = sinasc_dbc([("270010", "01012015")] * 400)
    (mirror / SINASC / "NOV" / "DNRES" / "DNAL2015.dbc").write_bytes(big)
    with ftp_server(mirror, max_bytes_per_connection=1000) as url, caplog.at_level(logging.WARNING):
        report = dd.download(out, _options(url, retries=4), states=["AL"])
    assert caplog.text.count("DNAL2015.dbc: error_temp") >= 5  # dropped again and again
    assert report.ok, report.failed
    whole = (mirror / SINASC / "NOV" / "DNRES" / "DNAL2015.dbc").read_bytes()
    assert len(whole) > 5 * 1000  # more connections than the retries allow without progress: each resumed
    assert (out / "raw" / "sinasc" / "DNAL2015.dbc").read_bytes() == whole
    assert not list((out / "raw").rglob("*.part"))
    assert pl.read_parquet(out / dd.BIRTHS_FILE).filter(pl.col("year") == 2015)["live_births"].sum() == 400


def test_a_damaged_file_is_reported_with_its_address_and_the_others_land(mirror, tmp_path):
    (mirror / SINASC / "NOV" / "DNRES" / "DNSE2015.dbc").write_bytes(b"not a dbc file at all, just text")
    out = tmp_path / "demografia"
    with ftp_server(mirror) as url:
        report = dd.download(out, _options(url))
    assert list(report.failed) == ["DNSE2015.dbc"]
    assert f"{url}/{SINASC}/NOV/DNRES/DNSE2015.dbc" in report.failed["DNSE2015.dbc"]
    assert "damaged both times" in report.failed["DNSE2015.dbc"]
    assert not (out / "raw" / "sinasc" / "DNSE2015.dbc").exists()  # nothing half-checked left in place
    assert pl.read_parquet(out / dd.BIRTHS_FILE).filter(pl.col("cod_mun6") == 270010).height == 2


def test_a_server_without_tls_is_refused_unless_plain_ftp_is_allowed(mirror, tmp_path):
    with ftp_server(mirror) as url:
        with pytest.raises(FtpError, match="offers no TLS.*--plain-ftp"):
            dd.download(tmp_path / "a", FtpOptions(url=url, timeout_s=5))
        result = CliRunner().invoke(app, ["demography", "download", "--url", url, "--out", str(tmp_path / "b"), "--states", "SE"])
        assert result.exit_code == 1 and "offers no TLS" in result.output and "Traceback" not in result.output
        result = CliRunner().invoke(app, ["demography", "download", "--url", url, "--out", str(tmp_path / "b"),
                                          "--states", "SE", "--plain-ftp", "--years", "2015"])
    assert result.exit_code == 0, result.output
    assert f"--demography {tmp_path / 'b'}" in result.output
    assert pl.read_parquet(tmp_path / "b" / dd.BIRTHS_FILE)["live_births"].sum() == 4


def test_an_unknown_protocol_or_state_is_a_message(tmp_path):
    with pytest.raises(FtpError, match="unknown protocol 'http'"):
        dd.download(tmp_path, FtpOptions(url="http://example.org"))
    with pytest.raises(FtpError, match=r"unknown state\(s\) \['XX'\]"):
        dd.download(tmp_path, FtpOptions(url="ftp://127.0.0.1:1"), states=["xx"])


@pytest.mark.skipif(not small_disk.available(), reason="needs `unshare -rm` to mount a small tmpfs as a full disk")
def test_a_full_disk_stops_in_one_line_without_retrying_and_the_rerun_finishes(mirror, tmp_path):
    import os
    import sys

    from censo_forecast import cli

    (mirror / SINASC / "NOV" / "DNRES" / "DNAL2015.dbc").write_bytes(sinasc_dbc([("270010", "01012015")] * 20_000))
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    with ftp_server(mirror) as url:
        command = f"{sys.executable} -m censo_forecast.cli demography download --url {url} --plain-ftp --out {disk}/d"
        small_disk.run_script([
            f"mount -t tmpfs -o size=64k tmpfs {disk}",
            f"{command} >{logs}/first.out 2>{logs}/first.err; echo $? >{logs}/first.rc",
            f"mount -o remount,size=64m {disk}",
            f"{command} >{logs}/again.out 2>{logs}/again.err; echo $? >{logs}/again.rc",
            f"cp {disk}/d/{dd.BIRTHS_FILE} {logs}/",
        ], {**os.environ, cli.DEBUG_ENV: ""})
    stderr = (logs / "first.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (logs / "first.rc").read_text().strip() == "1", stderr[-2000:]
    assert len(errors) == 1 and "DNAL2015.dbc" in errors[0] and "the disk is full" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr and "retry" not in stderr  # no retry makes room
    assert (logs / "again.rc").read_text().strip() == "0", (logs / "again.err").read_text()[-2000:]
    births = pl.read_parquet(logs / dd.BIRTHS_FILE)
    assert births.filter((pl.col("cod_mun6") == 270010) & (pl.col("year") == 2015))["live_births"].item() == 20_000
