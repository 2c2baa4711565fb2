"""The downloader against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import threading
import time
import zipfile
from http.server import ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import small_disk
from censo_forecast.cli import app
from censo_forecast.inep import catalog, download, synthetic
from mirror import Faults, Mirror, MirrorState, _Handler

YEARS = (2021, 2022, 2023)


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> dict[int, bytes]:
    raw = tmp_path_factory.mktemp("mirror-src")
    synthetic.generate(raw, synthetic.SynthSettings(list(YEARS), schools=150, seed=3))
    return {y: (raw / catalog.zip_name(y)).read_bytes() for y in YEARS}


@pytest.fixture
def state(zips) -> MirrorState:
    st = MirrorState()
    for year, data in zips.items():
        st.publish(f"/dados_abertos/{catalog.zip_name(year)}", data)
    return st


def _opts(url: str, **kw) -> download.DownloadOptions:
    base = dict(
        base_url=f"{url}/dados_abertos/",
        listing_url=f"{url}/censo-escolar",
        retries=6,
        timeout_s=5,
        backoff_s=0.01,
        backoff_cap_s=0.05,
        progress=False,
    )
    base.update(kw)
    return download.DownloadOptions(**base)


def _assert_identical(raw: Path, zips: dict[int, bytes], years=YEARS) -> None:
    for year in years:
        assert (raw / catalog.zip_name(year)).read_bytes() == zips[year], year
    assert not list(raw.glob("*.part")) and not list(raw.glob("*.validator"))


def test_discovers_listing_downloads_all_and_second_run_transfers_nothing(state, zips, tmp_path):
    with Mirror(state) as url:
        report = download.download(tmp_path, None, _opts(url))
        assert report.downloaded == list(YEARS) and report.ok
        _assert_identical(tmp_path, zips)
        gets_before = sum(1 for e in state.log if e[0] == "GET" and e[1].endswith(".zip"))
        again = download.download(tmp_path, None, _opts(url))
    assert again.downloaded == [] and again.unchanged == list(YEARS)
    assert sum(1 for e in state.log if e[0] == "GET" and e[1].endswith(".zip")) == gets_before
    manifest = download.Downloader(tmp_path, _opts("http://x")).manifest
    assert manifest["2022"]["etag"] == state.etag(f"/dados_abertos/{catalog.zip_name(2022)}")


def test_dropped_connections_resume_to_identical_bytes(state, zips, tmp_path):
    state.faults = Faults(drop_rate=0.6)
    with Mirror(state) as url:
        report = download.download(tmp_path, list(YEARS), _opts(url, retries=10))
    assert report.ok, report.failed
    _assert_identical(tmp_path, zips)
    assert any(e[2] and e[3] == 206 for e in state.log), "resumed with Range"


def test_503_then_success_honours_retry_after(state, zips, tmp_path):
    state.faults = Faults(fail_first=3, retry_after="0")
    with Mirror(state) as url:
        report = download.download(tmp_path, [2022], _opts(url))
    assert report.downloaded == [2022]
    _assert_identical(tmp_path, zips, [2022])
    assert [e[3] for e in state.log if e[1].endswith("2022.zip")][:3] == [503, 503, 503]


def test_retry_after_header_is_parsed():
    import httpx

    assert download._retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7
    assert download._retry_after(httpx.Response(503, headers={"Retry-After": "99999"})) == download.MAX_RETRY_AFTER_S
    assert download._retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
    assert download._retry_after(httpx.Response(503)) is None


def test_slow_server_within_timeout_succeeds(state, zips, tmp_path):
    state.faults = Faults(chunk_delay_s=0.002)
    with Mirror(state) as url:
        report = download.download(tmp_path, [2021], _opts(url, timeout_s=2))
    assert report.ok
    _assert_identical(tmp_path, zips, [2021])


def test_stalled_server_ends_in_clear_error_without_final_file(state, tmp_path):
    state.faults = Faults(chunk_delay_s=0.5)
    with Mirror(state) as url:
        report = download.download(tmp_path, [2021], _opts(url, timeout_s=0.2, retries=2))
    assert 2021 in report.failed and "microdados_censo_escolar_2021.zip" in report.failed[2021]
    assert "gave up" in report.failed[2021]
    assert not (tmp_path / catalog.zip_name(2021)).exists()


def test_lying_content_length_is_never_kept(state, tmp_path):
    state.faults = Faults(lie_length_by=1000)
    with Mirror(state) as url:
        report = download.download(tmp_path, [2023], _opts(url, retries=3))
    assert 2023 in report.failed
    assert f"{catalog.zip_name(2023)}" in report.failed[2023]
    assert not (tmp_path / catalog.zip_name(2023)).exists()


def test_corrupt_zip_is_rejected_not_kept(state, zips, tmp_path):
    bad = bytearray(zips[2022])
    middle = len(bad) // 2
    bad[middle : middle + 200] = bytes(200)
    state.publish(f"/dados_abertos/{catalog.zip_name(2022)}", bytes(bad))
    out = tmp_path / "raw"
    with Mirror(state) as url:
        report = download.download(out, [2022], _opts(url))
    assert "not a valid census zip" in report.failed[2022] and "not kept" in report.failed[2022]
    assert not (out / catalog.zip_name(2022)).exists() and not list(out.glob("*.part"))


def test_reissued_remote_file_is_fetched_again(state, zips, tmp_path):
    with Mirror(state) as url:
        download.download(tmp_path, [2021], _opts(url))
        reissued = synthetic.CensusSimulator(synthetic.SynthSettings([2021], schools=40, seed=9))
        reissued.initialise(2021)
        frame, _ = reissued.render(2021)
        synthetic.write_year_zip(tmp_path / "new.zip", 2021, synthetic.frame_to_csv_bytes(frame))
        new_bytes = (tmp_path / "new.zip").read_bytes()
        state.publish(f"/dados_abertos/{catalog.zip_name(2021)}", new_bytes)
        report = download.download(tmp_path, [2021], _opts(url))
    assert report.downloaded == [2021]
    assert (tmp_path / catalog.zip_name(2021)).read_bytes() == new_bytes


def test_partial_file_of_an_older_version_is_not_resumed(state, zips, tmp_path):
    part = tmp_path / (catalog.zip_name(2023) + ".part")
    part.write_bytes(b"old version bytes " * 100)
    (tmp_path / (part.name + ".validator")).write_text('"some-old-etag"\n')
    with Mirror(state) as url:
        report = download.download(tmp_path, [2023], _opts(url))
    assert report.ok
    _assert_identical(tmp_path, zips, [2023])


def test_listing_unreachable_falls_back_to_url_pattern(state, zips, tmp_path):
    state.listing_path = "/moved"
    with Mirror(state) as url:
        report = download.download(tmp_path, [2021, 2023], _opts(url))
    assert report.downloaded == [2021, 2023]
    assert any(e[0] == "HEAD" and e[1].endswith("2021.zip") for e in state.log)


def test_listing_links_prefer_a_years_republication():
    html = """<a href='https://download.inep.gov.br/dados_abertos/microdados_censo_escolar_2024.zip'>x</a>
    <a href="/d/microdados_censo_escolar_2025_.zip">2025 (re-published)</a><a href="/d/microdados_censo_escolar_2025.zip">2025</a>
    <a href="microdados_censo_escolar_2019.zip?x=1"><a href="microdados_censo_escolar_2019.zip.md5">"""
    links = download.listing_links(html, "https://www.gov.br/inep/censo-escolar")
    assert links == {
        2024: "https://download.inep.gov.br/dados_abertos/microdados_censo_escolar_2024.zip",
        2025: "https://www.gov.br/d/microdados_censo_escolar_2025_.zip",
        2019: "https://www.gov.br/inep/microdados_censo_escolar_2019.zip?x=1",
    }


def test_a_republication_replaces_the_first_release_and_its_cache(tmp_path):
    """2025 first as the first release, then INEP re-publishes it (trailing '_'): the next run
    fetches the re-publication, removes the first release, records which file the year came
    from, and ingest replaces the year's cache."""
    from censo_forecast.inep import ingest, synthetic

    first, second = tmp_path / "first", tmp_path / "second"
    synthetic.generate(first, synthetic.SynthSettings([2025], schools=60, seed=5, first_release=True))
    synthetic.generate(second, synthetic.SynthSettings([2025], schools=60, seed=6))
    state = MirrorState()
    state.publish("/dados_abertos/microdados_censo_escolar_2025.zip", (first / "microdados_censo_escolar_2025.zip").read_bytes())
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    with Mirror(state) as url:
        assert download.download(raw, None, _opts(url)).downloaded == [2025]
        assert json.loads((raw / download.MANIFEST).read_text())["2025"]["file"] == "microdados_censo_escolar_2025.zip"
        ingest.ingest(raw, cache, [2025]).raise_for_failures()
        before = pl.read_parquet(ingest.cache_path(cache, 2025))
        state.publish("/dados_abertos/microdados_censo_escolar_2025_.zip", (second / "microdados_censo_escolar_2025_.zip").read_bytes())
        assert download.download(raw, None, _opts(url)).downloaded == [2025]
        assert download.download(raw, None, _opts(url)).unchanged == [2025]  # and it stays
    assert sorted(p.name for p in raw.glob("*.zip")) == ["microdados_censo_escolar_2025_.zip"]
    entry = json.loads((raw / download.MANIFEST).read_text())["2025"]
    assert entry["file"] == "microdados_censo_escolar_2025_.zip" and entry["url"].endswith("/microdados_censo_escolar_2025_.zip")
    assert ingest.ingest(raw, cache, [2025]).written == [2025]
    after = pl.read_parquet(ingest.cache_path(cache, 2025))
    assert not after.equals(before) and after.equals(ingest.read_census_zip(raw / "microdados_censo_escolar_2025_.zip", 2025))


def test_a_republished_year_is_found_by_its_url_pattern_too(tmp_path):
    from censo_forecast.inep import synthetic

    synthetic.generate(tmp_path / "src", synthetic.SynthSettings([2025], schools=40, seed=2))
    state = MirrorState()
    state.listing_path = "/moved"
    state.publish(
        "/dados_abertos/microdados_censo_escolar_2025_.zip", (tmp_path / "src" / "microdados_censo_escolar_2025_.zip").read_bytes()
    )
    with Mirror(state) as url:
        report = download.download(tmp_path / "raw", [2025], _opts(url))
    assert report.downloaded == [2025] and (tmp_path / "raw" / "microdados_censo_escolar_2025_.zip").exists()


def test_a_damaged_table_of_a_multi_table_zip_is_refused(tmp_path):
    """Every table's CRC is checked, not only Escola's (here Docente's bytes are flipped)."""
    from censo_forecast.inep import archive, synthetic

    synthetic.generate(tmp_path, synthetic.SynthSettings([2025], schools=40, seed=2))
    path = tmp_path / "microdados_censo_escolar_2025_.zip"
    assert len(archive.verify_zip(path, 2025)) == 6  # the four tables, Gestor_Escolar and Curso_Tecnico
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if "Docente" in i.filename)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 20
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(archive.ArchiveError, match="Tabela_Docente_2025_V2.csv"):
        archive.verify_zip(path, 2025)


def test_missing_year_is_a_clear_error_after_the_others(state, zips, tmp_path):
    with Mirror(state) as url:
        result = CliRunner().invoke(app, [
            "download", "--years", "2021,2030", "--raw-dir", str(tmp_path),
            "--base-url", f"{url}/dados_abertos/", "--listing-url", f"{url}/censo-escolar",
        ])
    assert result.exit_code != 0
    assert "2030" in result.output and "not offered" in result.output
    _assert_identical(tmp_path, zips, [2021])


def test_write_failure_names_the_path_and_keeps_no_final_file(state, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    from censo_forecast import atomic

    monkeypatch.setattr(download, "open", full_disk, raising=False)
    with Mirror(state) as url, pytest.raises(atomic.DiskFull, match=f"cannot write {tmp_path}/\\S+.part: the disk is full"):
        download.download(tmp_path, [2021], _opts(url))  # a full disk stops every year: one message, not one per year
    assert not (tmp_path / catalog.zip_name(2021)).exists()


def test_unwritable_raw_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(download.DownloadError, match=f"cannot create {blocker}/raw"):
        download.download(blocker / "raw", [2021], _opts("http://127.0.0.1:9"))


# ------------------------------------------------------------------------ TLS
def test_inep_intermediate_is_trusted_for_inep_only():
    ctx = download.ssl_context(add_inep_intermediate=True)
    subjects = [dict(x[0] for x in c["subject"]).get("commonName", "") for c in ctx.get_ca_certs()]
    assert "RNP ICPEdu GR46 OV TLS CA 2025" in subjects
    plain = download.ssl_context()
    assert "RNP ICPEdu GR46 OV TLS CA 2025" not in [dict(x[0] for x in c["subject"]).get("commonName", "") for c in plain.get_ca_certs()]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


@pytest.fixture
def https_mirror(state, tmp_path):
    """An HTTPS mirror whose certificate is signed by a private CA made here."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    d = tmp_path / "pki"
    d.mkdir()
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=censo-test-ca",
    )
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(d / "leaf.pem", d / "leaf.key")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", d / "ca.pem"
    server.shutdown()
    server.server_close()


def test_tls_is_verified_and_ca_bundle_extends_trust(https_mirror, zips, tmp_path):
    url, ca = https_mirror
    refused = download.download(tmp_path / "a", [2021], _opts(url, retries=1))  # unknown CA: verification is on
    assert re.search(r"https://127\.0\.0\.1:\d+/.*CERTIFICATE_VERIFY_FAILED", refused.failed[2021])
    assert not (tmp_path / "a" / catalog.zip_name(2021)).exists()
    trusted = download.download(tmp_path / "b", [2021], _opts(url, ca_bundle=ca))
    assert trusted.downloaded == [2021]
    _assert_identical(tmp_path / "b", zips, [2021])


def test_insecure_warns_loudly(https_mirror, tmp_path, caplog):
    url, _ = https_mirror
    report = download.download(tmp_path, [2021], _opts(url, insecure=True))
    assert report.downloaded == [2021]
    assert "TLS certificate verification is OFF" in caplog.text


# ---------------------------------------------------------------- safe extraction
def test_listed_file_that_is_missing_is_a_clear_404(state, zips, tmp_path):
    state.listing_extra = '<li><a href="/dados_abertos/microdados_censo_escolar_2019.zip">2019</a></li>'
    with Mirror(state) as url:
        report = download.download(tmp_path, None, _opts(url))
    assert report.downloaded == list(YEARS)
    assert "404 Not Found" in report.failed[2019] and "microdados_censo_escolar_2019.zip" in report.failed[2019]
    assert not (tmp_path / catalog.zip_name(2019)).exists()


def test_unreachable_host_fails_fast_with_a_hint(tmp_path, caplog):
    import socket

    with socket.socket() as sock:  # a port on this machine with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    report = download.download(tmp_path, [2021, 2022, 2023], _opts(url, retries=8))
    assert sorted(report.failed) == [2021, 2022, 2023]  # every year told, after one probe of the host
    assert re.search(r"ConnectError.*is the host reachable from this machine\? use --offline", report.failed[2021])
    assert re.search(r"refused the connection.*is the host reachable from this machine\? use --offline", report.failed[2023])
    for year in (2021, 2022, 2023):  # each year's message names its own URL, never another year's
        urls = re.findall(r"\S*microdados_censo_escolar_\d{4}_?\.zip", report.failed[year])
        assert urls and all(f"_{year}" in u for u in urls), report.failed[year]
    attempts = [r for r in caplog.records if "ConnectError" in r.getMessage() and "retry" in r.getMessage()]
    assert len(attempts) == 2 * (download.CONNECT_ATTEMPTS - 1)  # listing, then the HEAD fallback


def test_an_https_redirect_to_plain_http_is_refused(state, https_mirror, tmp_path):
    """INEP's https URL answering 302 to http:// elsewhere is refused (both URLs named), and the
    manifest records nothing; an http base URL the user chose is still allowed."""
    url, ca = https_mirror
    with Mirror(state) as plain:
        state.redirects["/dados_abertos/microdados_censo_escolar_2021.zip"] = f"{plain}/elsewhere/microdados_censo_escolar_2021.zip"
        state.publish("/elsewhere/microdados_censo_escolar_2021.zip", state.files["/dados_abertos/microdados_censo_escolar_2021.zip"])
        report = download.download(tmp_path / "a", [2021], _opts(url, ca_bundle=ca, retries=1))
        assert 2021 in report.failed and not (tmp_path / "a" / catalog.zip_name(2021)).exists()
        message = report.failed[2021]
        assert f"{url}/dados_abertos/microdados_censo_escolar_2021.zip redirects to {plain}/elsewhere/" in message
        assert "refused" in message and not (tmp_path / "a" / download.MANIFEST).exists()
        # the user's own http mirror: allowed, redirect included
        assert download.download(tmp_path / "b", [2021], _opts(plain)).downloaded == [2021]


def test_an_https_listing_linking_to_plain_http_is_refused(state, https_mirror, tmp_path):
    url, ca = https_mirror
    other = MirrorState()  # a plain-http host of its own
    other.publish("/d/microdados_censo_escolar_2019.zip", state.files["/dados_abertos/microdados_censo_escolar_2021.zip"])
    with Mirror(other) as plain:
        state.listing_extra = f'<a href="{plain}/d/microdados_censo_escolar_2019.zip">2019</a>'
        opts = _opts(url, ca_bundle=ca, retries=1)
        report = download.download(tmp_path, [2019], opts)
    assert f"links {plain}/d/microdados_censo_escolar_2019.zip, a plain-http URL: refused" in report.failed[2019]
    assert not other.log  # nothing was even asked of the plain-http host
    assert not (tmp_path / catalog.zip_name(2019)).exists()


def test_a_hanging_server_costs_bounded_time_and_the_other_years_arrive(state, zips, tmp_path):
    """HEAD of 2022 never answers: with --timeout 1 the command gives that year up after a few
    seconds, not 8 x 60, while 2021 and 2023 are fetched; the failure is reported at the end."""
    state.faults.hang_paths = ("/dados_abertos/microdados_censo_escolar_2022.zip",)
    state.faults.hang_s = 20.0
    state.listing_path = "/moved"  # probe by HEAD, one year after the other
    started = time.monotonic()
    with Mirror(state) as url:
        result = CliRunner().invoke(app, ["download", "--years", "2021-2023", "--raw-dir", str(tmp_path), "--timeout", "1",
                                          "--base-url", f"{url}/dados_abertos/", "--listing-url", f"{url}/moved"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert "2022" in result.output and "gave up" in result.output and "--timeout" in result.output
    _assert_identical(tmp_path, zips, [2021, 2023])
    assert not (tmp_path / catalog.zip_name(2022)).exists()
    assert elapsed < 15, elapsed  # 3 waits of 1 s (and back-off), nowhere near 8 x 60 s


@pytest.mark.skipif(not small_disk.available(), reason="needs `unshare -rm` to mount a small tmpfs as a full disk")
def test_a_full_disk_stops_the_download_in_one_line_and_the_rerun_resumes(state, zips, tmp_path):
    """The raw folder fills up mid-transfer: exit 1, one line naming the .part file and the full
    disk, no zip under its final name; with room made, the same command brings identical bytes."""
    import os
    import sys

    from censo_forecast import cli

    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    room = sum(len(z) for z in zips.values()) // 2  # the second year's transfer meets the full disk
    with Mirror(state) as url:
        command = (f"{sys.executable} -m censo_forecast.cli download --raw-dir {disk}/raw --base-url {url}/dados_abertos/ "
                   f"--listing-url {url}/censo-escolar --jobs 1")
        small_disk.run_script([
            f"mount -t tmpfs -o size={room} tmpfs {disk}",
            f"{command} >{logs}/first.out 2>{logs}/first.err; echo $? >{logs}/first.rc",
            f"ls {disk}/raw >{logs}/first.ls",
            f"mount -o remount,size=64m {disk}",
            f"{command} >{logs}/again.out 2>{logs}/again.err; echo $? >{logs}/again.rc",
            f"cp {disk}/raw/*.zip {logs}/",
        ], {**os.environ, cli.DEBUG_ENV: ""})
    stderr = (logs / "first.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (logs / "first.rc").read_text().strip() == "1", stderr[-2000:]
    assert len(errors) == 1 and re.search(rf"cannot write {disk}/raw/\S+\.part: the disk is full", errors[0]), stderr[-2000:]
    assert "Traceback" not in stderr
    listed = (logs / "first.ls").read_text().split()
    assert all(name.endswith((".zip", ".json")) or ".part" in name for name in listed)
    kept = sorted(int(re.findall(r"\d{4}", name)[0]) for name in listed if name.endswith(".zip"))
    assert kept and len(kept) < len(YEARS)
    assert (logs / "again.rc").read_text().strip() == "0", (logs / "again.err").read_text()[-2000:]
    assert f"unchanged {kept}" in (logs / "again.out").read_text()  # a zip under its final name was a whole one
    _assert_identical(logs, zips)
