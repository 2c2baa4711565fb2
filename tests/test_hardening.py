"""Hostile but realistic use (issue #24): settings, addresses, folders that would mix runs, a
prediction on the wrong census, SIGTERM. Each ends in one line, before any work, or as Ctrl-C does."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import small_disk
from censo_forecast import cli
from censo_forecast.cli import app
from censo_forecast.config import load_settings


def _one_line_error(result, message: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--engine", "dask", "--scheduler", "not-an-address"], "--scheduler 'not-an-address': expected tcp://host:port"),
    (["--raw-dir", "foo://bucket/raw"], "--raw-dir foo://bucket/raw: unknown protocol 'foo'"),
])
def test_addresses_are_checked_before_any_work(tmp_path, args, message):
    base = ["run", "--offline", "--raw-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]
    _one_line_error(CliRunner().invoke(app, [*base, *args]), message)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_an_object_store_without_its_package_says_what_to_install(tmp_path):
    result = CliRunner().invoke(app, ["run", "--raw-dir", "s3://bucket/raw", "--out", str(tmp_path / "o")])
    _one_line_error(result, "the s3:// protocol needs a package that is not installed (pip install s3fs)")


def test_the_cache_cannot_be_the_raw_folder(tmp_path):
    result = CliRunner().invoke(app, ["ingest", "--raw-dir", str(tmp_path), "--cache-dir", str(tmp_path / "." )])
    _one_line_error(result, "is the raw folder: each keeps its own manifest.json")


def test_config_files_as_people_save_them(tmp_path, monkeypatch):
    bom = tmp_path / "notepad.toml"
    bom.write_bytes("\ufeffhorizons = 3\n".encode())  # Windows Notepad's byte-order mark
    assert load_settings(bom).horizons == 3
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path), "--out", str(tmp_path / "o")])
    _one_line_error(result, f"--config {tmp_path} is a folder; give the TOML file's path")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "tilde.toml"
    home.write_text('out_dir = "~/resultados"\nraw_dir = "~/raw"\n')
    settings = load_settings(home)
    assert settings.out_dir == tmp_path / "home" / "resultados" and settings.raw_dir == tmp_path / "home" / "raw"


@pytest.mark.parametrize("value, on", [("1", True), ("yes", True), ("0", False), ("", False), ("false", False), ("off", False)])
def test_debugging_is_on_only_when_asked(monkeypatch, value, on):
    monkeypatch.setenv(cli.DEBUG_ENV, value)
    assert cli.debugging() is on


def test_predict_refuses_a_run_folder_and_a_census_that_does_not_fit_the_models(small_census, run_out, tmp_path):
    raw, _ = small_census
    base = ["predict", "--models", str(run_out / "models"), "--raw-dir", str(raw), "--cache-dir", str(tmp_path / "cache"),
            "--offline"]
    before = sorted(p.name for p in run_out.iterdir())
    result = CliRunner().invoke(app, [*base, "--out", str(run_out)])
    _one_line_error(result, f"--out {run_out} holds a run's outputs (run_metadata.json)", code=1)
    assert sorted(p.name for p in run_out.iterdir()) == before  # nothing of the run's was touched
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a"), "--years", "2011-2020"])
    assert result.exit_code == 1 and "ends in 2020, before 2025, the models' last training year" in result.output
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--years", "2020-2025"])
    assert result.exit_code == 1 and "--years starts in 2020, but the models' features read every census year from 2011" in result.output
    assert not list((tmp_path / "b").glob("previsoes_*"))


def test_too_many_workers_are_capped_at_the_cpus(monkeypatch, caplog):
    pytest.importorskip("dask.distributed")
    from censo_forecast import machine
    from censo_forecast.distributed import dask as dask_engine

    monkeypatch.setattr(machine, "available_cpus", lambda *a, **k: 1)
    with caplog.at_level(logging.WARNING), dask_engine._client(None, 50) as client:
        assert len(client.scheduler_info()["workers"]) == 1
    assert "--workers 50: this machine gives this process 1 CPU(s); starting 1 workers" in caplog.text


def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_same_command_resumes(small_census, tmp_path):
    """A scheduler's SIGTERM mid-run: one line naming what finished, exit 143, the folder's lock
    released; the same command then finishes the job."""
    raw, _ = small_census
    out = tmp_path / "out"
    command = [sys.executable, "-m", "censo_forecast.cli", "run", "--offline", "--raw-dir", str(raw), "--cache-dir",
               str(tmp_path / "cache"), "--out", str(out), "--stages", "IN_INF_CRE,IN_MED,IN_FUND_AF", "--device", "cpu",
               "--jobs", "1"]
    env = {**os.environ, cli.DEBUG_ENV: ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("cv_*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    last = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(last) == 1 and "terminated (SIGTERM); stages finished and kept: IN_INF_CRE" in last[0]
    assert "Traceback" not in stderr
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "IN_INF_CRE: validation resumed from checkpoint" in (out / "execution_log.txt").read_text()
    assert Path(out / "run_metadata.json").exists()


def _small_zips(folder: Path, seed: int) -> Path:
    from censo_forecast.inep import synthetic

    synthetic.generate(folder, synthetic.SynthSettings(years=[2019, 2020], schools=60, seed=seed))
    return folder


def test_a_zip_replaced_with_the_same_size_and_time_is_ingested_again(tmp_path):
    """cp -p keeps a replaced zip's mtime; sizes can match: the content's hash decides."""
    import json

    from censo_forecast.inep import ingest

    raw, cache = _small_zips(tmp_path / "raw", 3), tmp_path / "cache"
    ingest.ingest(raw, cache, [2019, 2020]).raise_for_failures()
    manifest = json.loads((cache / ingest.MANIFEST).read_text())
    manifest["2020"]["sha256"] = "0" * 64  # what another content with the same size and mtime looks like
    (cache / ingest.MANIFEST).write_text(json.dumps(manifest))
    again = ingest.ingest(raw, cache, [2019, 2020])
    assert again.written == [2020] and again.skipped == [2019]


def test_a_cache_shared_with_another_census_is_never_used_for_this_one(tmp_path, monkeypatch):
    from censo_forecast.inep import ingest

    raw_a, raw_b, cache = _small_zips(tmp_path / "a", 3), _small_zips(tmp_path / "b", 4), tmp_path / "cache"
    ingest.ingest(raw_a, cache, [2019, 2020]).raise_for_failures()
    assert ingest.load_cache(cache, [2019, 2020], raw_a).height > 0
    ingest.ingest(raw_b, cache, [2019, 2020]).raise_for_failures()  # another census, into the same cache
    with pytest.raises(ingest.IngestError, match=r"holds year\(s\) \[2019, 2020\] made from other zips"):
        ingest.load_cache(cache, [2019, 2020], raw_a)
    # while one process holds the cache, another waits for it (here: no time) and says who holds it
    monkeypatch.setattr(ingest, "CACHE_LOCK_WAIT_S", 0.0)
    with ingest.cache_lock(cache), pytest.raises(ingest.IngestError, match=f"process {os.getpid()}"):
        ingest.ingest(raw_a, cache, [2019, 2020])


def test_a_folder_left_by_a_stopped_run_is_marked_and_the_report_refuses_it(run_out, tmp_path):
    import shutil

    from censo_forecast import outputs
    from censo_forecast.report import build_report, data

    copy = tmp_path / "out"
    shutil.copytree(run_out, copy)
    assert not (copy / outputs.INCOMPLETE).exists()  # a finished run removes its mark
    (copy / outputs.INCOMPLETE).write_text("censo-forecast run started ...")
    with pytest.raises(data.DamagedOutput, match="was left by a command that did not finish"):
        build_report(copy)
    (copy / outputs.INCOMPLETE).unlink()
    for name in ("previsoes_2027_ufs.csv", "historico_matriculas.csv"):
        (copy / name).unlink()
    result = CliRunner().invoke(app, ["report", "--out", str(copy)])
    assert result.exit_code == 1 and "lacks 2 file(s) the run wrote: historico_matriculas.csv, previsoes_2027_ufs.csv" in result.output
    assert "recreate them with `censo-forecast run --out" in result.output and "Traceback" not in result.output


def test_a_rerun_with_fewer_horizons_leaves_only_its_own_forecasts(small_census, run_out, tmp_path):
    import shutil

    from censo_forecast import outputs, pipeline
    from conftest import FAST_RUN

    raw, _ = small_census
    out = tmp_path / "out"
    shutil.copytree(run_out, out)  # a five-year run's folder (its checkpoints too)
    record = pipeline.run(load_settings(None, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=out, horizons=2, **FAST_RUN))
    left = sorted(p.name for p in out.glob("previsoes_*"))
    assert {name.split("_")[1].split(".")[0] for name in left} == {"2026", "2027"} and record["forecast_years"] == [2026, 2027]
    assert "removed 15 forecast file(s) of an earlier run" in (out / outputs.LOG).read_text()  # 3 years x 5 files
    assert not (out / outputs.INCOMPLETE).exists() and record["skipped_stages"] == {}


def test_a_stage_too_few_schools_offer_is_skipped_for_that_reason_and_listed(caplog):
    """Creche offered by one school in the last census year only: the years are enough, the
    schools are not; the message says so, and the forecaster lists it as skipped."""
    from censo_forecast.config import ModelSettings
    from censo_forecast.forecaster import EnrollmentForecaster
    from test_forecasting import census_rows

    rows = [{"NU_ANO_CENSO": y, "CO_ENTIDADE": s, "IN_MED": 1, "QT_MAT_MED": 100 + s + y % 7} for y in range(2015, 2022)
            for s in range(1, 40)]
    rows += [{"NU_ANO_CENSO": 2021, "CO_ENTIDADE": 1, "IN_MED": 1, "QT_MAT_MED": 100, "IN_INF_CRE": 1, "QT_MAT_INF_CRE": 20}]
    census = census_rows([r for r in rows if not (r["CO_ENTIDADE"] == 1 and r["NU_ANO_CENSO"] == 2021 and "IN_INF_CRE" not in r)])
    fc = EnrollmentForecaster(["IN_MED", "IN_INF_CRE"], horizons=1, model=ModelSettings(n_estimators=5), device="cpu", n_jobs=1)
    with caplog.at_level(logging.WARNING):
        fc.fit(census)
    assert list(fc.models_) == ["IN_MED"]
    assert "too few schools offer this stage" in fc.skipped_stages_["IN_INF_CRE"]
    assert "not enough years" not in fc.skipped_stages_["IN_INF_CRE"]


def test_a_full_disk_is_named_whatever_words_the_writer_used(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full disk does. Python says so by errno,
    polars' parquet writer only in words; both become one message naming the file."""
    import polars as pl

    from censo_forecast import atomic

    errors = []
    with pytest.raises(OSError) as plain:
        with open("/dev/full", "wb") as handle:
            handle.write(b"x" * 65536)
    errors.append(plain.value)
    with pytest.raises(Exception) as parquet:
        pl.DataFrame({"a": range(100_000)}).write_parquet("/dev/full")
    errors.append(parquet.value)
    target = tmp_path / "previsoes_2026.parquet"
    for error in errors:
        full = atomic.disk_full(error, target)
        assert isinstance(full, atomic.DiskFull), error
        assert str(full).startswith(f"cannot write {target}: the disk is full") and "rerun the same command" in str(full)
    # with room to spare, other failures keep their own words
    assert atomic.disk_full(PermissionError(13, "Permission denied"), target) is None
    assert atomic.disk_full(ValueError("bad frame"), target) is None


@pytest.mark.skipif(not small_disk.available(), reason="needs `unshare -rm` to mount a small tmpfs as a full disk")
def test_a_full_disk_ends_in_one_line_and_the_same_commands_resume(small_census, run_out, tmp_path):
    """ingest, run and predict on a real full disk (a small tmpfs in a private mount namespace):
    exit 1, one line naming the file, no traceback, no file under its final name that is half of
    one; with room made, the same commands finish."""
    raw, _ = small_census
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    cli_call = f"{sys.executable} -m censo_forecast.cli"
    run = (f"{cli_call} run --offline --raw-dir {raw} --cache-dir {tmp_path / 'cache'} --out {disk}/out --stages IN_MED "
           "--horizons 1 --device cpu --jobs 1")
    commands = {  # the run first, on an empty small disk: it fills up mid-run
        "run": run,
        "ingest": f"{cli_call} ingest --raw-dir {raw} --cache-dir {disk}/cache --years 2019-2025 --jobs 1",
        "predict": f"{cli_call} predict --models {run_out / 'models'} --raw-dir {raw} --cache-dir {tmp_path / 'cache'} "
                   f"--out {disk}/predict --offline",
    }
    script = [f"mount -t tmpfs -o size=64k tmpfs {disk}"]
    for name, command in commands.items():
        script.append(f"{command} >{logs}/{name}.out 2>{logs}/{name}.err; echo $? >{logs}/{name}.rc")
    script.append(f"{sys.executable} -c \"import polars as pl, pathlib, sys; "
                  f"[pl.read_parquet(p) for p in pathlib.Path('{disk}').rglob('*.parquet') if not p.name.startswith('.')]\" "
                  f"2>{logs}/intact.err; echo $? >{logs}/intact.rc")
    script.append(f"mount -o remount,size=64m {disk}")
    for name in ("ingest", "run"):
        script.append(f"{commands[name]} >{logs}/{name}.again.out 2>{logs}/{name}.again.err; echo $? >{logs}/{name}.again.rc")
    script.append(f"cp {disk}/out/resultados_finais.csv {disk}/out/run_metadata.json {logs}/")
    script.append(f"{run.replace(f'{disk}/out', str(tmp_path / 'whole'))} >/dev/null 2>&1")  # never interrupted
    env = {**os.environ, cli.DEBUG_ENV: ""}
    small_disk.run_script(script, env)

    def read(name: str) -> str:
        return (logs / name).read_text()

    for name in commands:
        stderr = read(f"{name}.err")
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert read(f"{name}.rc").strip() == "1", stderr[-2000:]
        assert len(errors) == 1 and f"cannot write {disk}" in errors[0] and "the disk is full" in errors[0], stderr[-2000:]
        assert "Traceback" not in stderr and "Logging error" not in stderr
    assert read("intact.rc").strip() == "0", read("intact.err")  # every parquet under its final name is whole
    for name in ("ingest", "run"):
        assert read(f"{name}.again.rc").strip() == "0", read(f"{name}.again.err")[-2000:]
    assert read("resultados_finais.csv") == (tmp_path / "whole" / "resultados_finais.csv").read_text()


def test_a_horizon_that_cannot_be_validated_keeps_the_last_validated_choice_and_says_so(small_census, tmp_path, caplog):
    """Five years ahead on a census too short to test it: it keeps the model chosen four years
    ahead (no switch to Voting where nothing was measured), has no range, and the log, the run
    record and the report say so."""
    import json

    import polars as pl

    from censo_forecast import pipeline
    from conftest import FAST_RUN

    raw, _ = small_census
    out = tmp_path / "out"
    settings = load_settings(None, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=out,
                             **{**FAST_RUN, "stages": ["IN_MED"], "min_train_years": 11})
    with caplog.at_level(logging.WARNING):
        pipeline.run(settings)
    schools = pl.concat([pl.read_parquet(out / f"previsoes_{year}.parquet") for year in range(2026, 2031)])
    models = dict(schools.group_by("horizonte").agg(pl.col("modelo").unique()).select("horizonte", pl.col("modelo").list.first()).rows())
    assert schools.group_by("horizonte").agg(pl.col("modelo").n_unique())["modelo"].max() == 1
    assert models[5] == models[4]  # carried, not switched
    assert schools.filter(pl.col("horizonte") == 5)["limite_inferior_80"].null_count() == schools.filter(pl.col("horizonte") == 5).height
    assert f"they keep the model chosen for 4 year(s) ahead ({models[4]})" in caplog.text
    record = json.loads((out / "run_metadata.json").read_text())
    assert record["unvalidated_horizons"] == {"IN_MED": {"years_ahead": [5], "model_of": 4}}
    page = (out / "report.html").read_text()
    assert "testar 5 ano(s) à frente (Ensino médio): essas previsões seguem o modelo escolhido para 4 ano(s)" in page
