"""`run` end to end: outputs, checkpoint resume, --fresh, the CLI and the seed's entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from censo_forecast import outputs, pipeline
from censo_forecast.cli import app
from censo_forecast.config import load_settings
from censo_forecast.models import CENSUS_MODEL_NAMES as MODEL_NAMES

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["IN_INF_PRE", "IN_FUND_AF"]
SEED_COLUMNS = ["etapa", "modelo", "R2_Media_CV", "RMSE_Media_CV", "MAE_Media_CV"]


@pytest.fixture
def fast_config(tmp_path) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text('min_train_years = 11\njobs = 1\n[model]\nn_estimators = 20\nnum_leaves = 15\nmax_depth = 4\n')
    return path


@pytest.mark.slow
def test_run_writes_results_predictions_and_log(small_census, tmp_path, fast_config):
    raw, _ = small_census
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--raw-dir", str(raw), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                                      "--offline", "--stages", ",".join(STAGES), "--device", "cpu", "--config", str(fast_config)])
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out / "resultados_finais.csv")
    assert table.columns[:5] == SEED_COLUMNS
    assert {"WAPE_Media_CV", "Skill_MAE_vs_Persistencia", "n_folds", "n_amostras"} <= set(table.columns)
    assert set(table["etapa"]) == set(STAGES) and set(table["modelo"]) == set(MODEL_NAMES)
    assert (table.filter(pl.col("modelo") == "Persistencia")["Skill_MAE_vs_Persistencia"] == 0).all()
    assert table["horizonte"].unique().sort().to_list() == [1, 2, 3, 4]  # origins 2021-2024 reach 2025
    preds = pl.read_parquet(out / "cv_predictions.parquet")
    assert preds.select(pl.struct("etapa", "CO_ENTIDADE", "NU_ANO_CENSO", "horizonte").is_unique().all()).item()
    assert {"y_true", "horizonte", "ano_origem", *MODEL_NAMES} <= set(preds.columns)
    assert (preds["NU_ANO_CENSO"] - preds["ano_origem"] == preds["horizonte"]).all()
    assert set(preds.filter(pl.col("horizonte") == 1)["NU_ANO_CENSO"]) == {2022, 2023, 2024, 2025}
    assert set(preds.filter(pl.col("horizonte") == 4)["NU_ANO_CENSO"]) == {2025}
    # the table's MAE is the mean over test years of the row-level errors
    pre = preds.filter((pl.col("etapa") == "IN_INF_PRE") & (pl.col("horizonte") == 1))
    mae = pre.group_by("NU_ANO_CENSO").agg((pl.col("Voting") - pl.col("y_true")).abs().mean())["Voting"].mean()
    voting = table.filter((pl.col("etapa") == "IN_INF_PRE") & (pl.col("modelo") == "Voting") & (pl.col("horizonte") == 1))
    assert voting["MAE_Media_CV"].item() == pytest.approx(mae)
    log_text = (out / "execution_log.txt").read_text()
    assert "setting stages" in log_text and "versions:" in log_text and "device: cpu" in log_text
    assert log_text.count("demography: none given") == 1  # without births, said once
    assert "Demografia" not in set(table["modelo"])
    assert "timing validate IN_FUND_AF" in log_text
    meta = json.loads((out / "run_metadata.json").read_text())
    assert meta["years"] == list(range(2011, 2026)) and meta["versions"]["lightgbm"]
    assert meta["forecast_year"] == 2026 and meta["forecast_years"] == [2026, 2027, 2028, 2029, 2030]
    assert meta["births_weight"] == {}  # without births, no municipal blend
    for year in meta["forecast_years"]:  # every forecast year's files, each year's rows only
        schools = pl.read_parquet(out / f"previsoes_{year}.parquet")
        assert set(schools["horizonte"]) == {year - 2025} and set(schools["etapa"]) == set(STAGES)
        for level in ("municipios", "ufs", "brasil"):
            assert set(pl.read_csv(out / f"previsoes_{year}_{level}.csv")["horizonte"]) == {year - 2025}
    assert meta["engine"] == "local"
    phases = [p["phase"] for p in meta["phases"]]  # the phase clock the pipeline benchmark reads
    assert {f"{step} {flag}" for step in ("features", "validate", "shap", "refit") for flag in STAGES} | {
        "ingest",
        "panel",
        "forecast",
    } <= set(phases)
    starts = [p["start_s"] for p in meta["phases"]]
    assert starts == sorted(starts) and all(p["seconds"] >= 0 for p in meta["phases"])
    assert meta["timings_s"]["total"] >= sum(p["seconds"] for p in meta["phases"]) - 0.01


@pytest.mark.slow
def test_interrupted_run_resumes_from_checkpoints(small_census, tmp_path, fast_config, caplog):
    """Ctrl-C (a real SIGINT to a real `censo-forecast run`) after the first stage's
    checkpoint: exit 130 with a hint, then the same run resumes from that stage."""
    raw, _ = small_census
    out = tmp_path / "out"
    s = load_settings(fast_config, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=out, offline=True,
                      stages=STAGES, device="cpu")
    ck = out / "checkpoints" / "cv_IN_INF_PRE.json"
    command = [sys.executable, "-m", "censo_forecast.cli", "run", "--raw-dir", str(raw), "--cache-dir", str(tmp_path / "cache"),
               "--out", str(out), "--offline", "--stages", ",".join(STAGES), "--device", "cpu", "--config", str(fast_config)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted; stages finished and kept: IN_INF_PRE; rerun the same command to resume" in output
    assert ck.exists() and not (out / "resultados_finais.csv").exists()
    stamp = ck.stat().st_mtime_ns
    caplog.clear()
    pipeline.run(s)
    assert "IN_INF_PRE: validation resumed from checkpoint" in caplog.text
    assert "IN_FUND_AF: validated" in caplog.text
    assert ck.stat().st_mtime_ns == stamp
    first = pl.read_csv(tmp_path / "out" / "resultados_finais.csv")
    s.fresh = True
    caplog.clear()
    pipeline.run(s)
    assert "resumed from checkpoint" not in caplog.text and ck.stat().st_mtime_ns != stamp
    assert pl.read_csv(tmp_path / "out" / "resultados_finais.csv").equals(first)


@pytest.mark.slow
def test_a_sum_of_stages_is_derived_from_its_parts_in_a_run(small_census, tmp_path, fast_config):
    """All elementary beside its parts: no features, walk-forward, SHAP or refit of its own;
    its rows in the run's files are its parts' summed; what an earlier run left of it (its
    checkpoint record, its SHAP plots) goes."""
    from censo_forecast.outputs import SUM_OF_PARTS, shap_png

    raw, _ = small_census
    out = tmp_path / "out"
    stale = [out / "checkpoints" / "cv_IN_FUND.json", out / "shap" / shap_png("summary", "IN_FUND", "Voting")]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("an earlier run's")
    stages = ["IN_FUND", "IN_FUND_AI", "IN_FUND_AF"]
    s = load_settings(fast_config, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=out, offline=True, stages=stages,
                      device="cpu", horizons=2)
    record = pipeline.run(s)
    phases = {p["phase"] for p in record["phases"]}
    assert {"validate IN_FUND_AI", "shap IN_FUND_AF", "sum of parts IN_FUND"} <= phases
    assert not {f"{step} IN_FUND" for step in ("features", "validate", "shap", "refit")} & phases
    assert record["stages"] == stages and not any(p.exists() for p in stale)
    assert {p.name for p in (out / "shap").glob("*.png")} >= {shap_png("bar", "IN_FUND_AI", "Voting")}
    assert not [p for p in (out / "shap").glob("*.png") if outputs.is_shap_png(p.name, "IN_FUND")]
    page = (out / "report.html").read_text(encoding="utf-8")
    sections = {flag: page.split(f"<details id='stage-{flag}'>", 1)[1].split("</details>", 1)[0] for flag in stages}
    assert "<h3>" not in sections["IN_FUND"] and "<h3>" in sections["IN_FUND_AI"]  # its parts' SHAP are theirs
    table = pl.read_csv(out / "resultados_finais.csv")
    assert table.filter(pl.col("Escolhido") & (pl.col("etapa") == "IN_FUND"))["modelo"].to_list() == [SUM_OF_PARTS] * 2
    preds = pl.read_parquet(out / "cv_predictions.parquet")
    keys = ["CO_ENTIDADE", "NU_ANO_CENSO", "horizonte"]
    parts = preds.filter(pl.col("etapa") != "IN_FUND").group_by(keys).agg(pl.col("y_true").sum())
    fund = preds.filter(pl.col("etapa") == "IN_FUND").join(parts, on=keys, suffix="_parts")
    assert fund.height == parts.height and (fund["y_true"] == fund["y_true_parts"]).all()
    schools = pl.read_parquet(out / "previsoes_2026.parquet")
    wide = schools.pivot(on="etapa", index="CO_ENTIDADE", values="previsao").fill_null(0.0)
    assert (wide["IN_FUND"] - wide["IN_FUND_AI"] - wide["IN_FUND_AF"]).abs().max() < 1e-6
    meta = json.loads((out / "models" / "metadata.json").read_text())
    assert meta["stages"]["IN_FUND"]["parts"] == ["IN_FUND_AI", "IN_FUND_AF"] and meta["stages"]["IN_FUND"]["files"] == {}


def test_offline_run_without_data_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["run", "--raw-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--offline"])
    assert result.exit_code == 1
    assert f"no census zips (microdados_censo_escolar_YYYY.zip) in {tmp_path / 'empty'}" in result.output


def test_unknown_stage_and_bad_config_are_usage_errors(tmp_path):
    result = CliRunner().invoke(app, ["run", "--stages", "IN_XYZ", "--offline"])
    assert result.exit_code == 2 and "unknown stage 'IN_XYZ'" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad), "--offline"])
    assert result.exit_code == 2 and "unknown setting(s) ['nonsense']" in result.output


@pytest.mark.slow
def test_seed_entry_point_runs_the_pipeline(small_census, tmp_path, fast_config):
    raw, _ = small_census
    out = tmp_path / "seed-out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_experiment.py"), "--raw-dir", str(raw), "--cache-dir", str(tmp_path / "c"),
         "--out", str(out), "--offline", "--stages", "IN_MED", "--device", "cpu", "--config", str(fast_config)],
        capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pl.read_csv(out / "resultados_finais.csv").columns[:5] == SEED_COLUMNS


@pytest.mark.slow
def test_run_downloads_missing_years_from_a_mirror(small_census, tmp_path, fast_config):
    """Without --offline, `run` fetches what the raw folder lacks, then does the whole job."""
    from mirror import Mirror, MirrorState

    raw_src, _ = small_census
    state = MirrorState()
    for path in sorted(raw_src.glob("microdados_censo_escolar_*.zip")):
        state.publish(f"/dados/{path.name}", path.read_bytes())
    raw = tmp_path / "raw"
    with Mirror(state) as url:
        result = CliRunner().invoke(app, ["run", "--raw-dir", str(raw), "--out", str(tmp_path / "out"), "--stages", "IN_MED",
                                          "--device", "cpu", "--config", str(fast_config), "--base-url", f"{url}/dados/",
                                          "--listing-url", f"{url}/censo-escolar"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in raw.glob("*.zip")) == sorted(p.name for p in raw_src.glob("*.zip"))
    assert (tmp_path / "out" / "previsoes_2026.csv").exists()


@pytest.mark.slow
def test_per_year_interval_coverage_is_written(run_out):
    coverage = pl.read_csv(run_out / "cobertura_intervalos_cv.csv")
    assert coverage.columns == ["etapa", "modelo", "horizonte", "NU_ANO_CENSO", "Cobertura_80", "Cobertura_95", "n"]
    # origins 2020-2024; a test year Y at horizon h is calibrated on target years <= Y - h only:
    # one year ahead the first test year (2021) has nothing earlier, two years ahead the first two
    years = {h: sorted(rows["NU_ANO_CENSO"].unique().to_list()) for (h,), rows in coverage.group_by("horizonte")}
    assert years[1] == [2022, 2023, 2024, 2025] and years[2] == [2024, 2025] and 4 not in years
    assert coverage["Cobertura_80"].is_between(0, 1).all() and (coverage["Cobertura_95"] >= coverage["Cobertura_80"]).all()
    table = pl.read_csv(run_out / "resultados_finais.csv")
    for h in (1, 2):
        voting = coverage.filter((pl.col("etapa") == "IN_MED") & (pl.col("modelo") == "Voting") & (pl.col("horizonte") == h))
        row = table.filter((pl.col("etapa") == "IN_MED") & (pl.col("modelo") == "Voting") & (pl.col("horizonte") == h))
        assert row["Cobertura_95_CV"].item() == pytest.approx(voting["Cobertura_95"].mean())


ENGINE_MODULE = '''
"""A test engine: the local engine, recording what the pipeline asks of it."""
from contextlib import contextmanager

from censo_forecast.engine import LocalEngine

CALLS = []


class RecordingEngine(LocalEngine):
    def ingest(self, *args, **kwargs):
        CALLS.append("ingest")
        return super().ingest(*args, **kwargs)

    def stage_data(self, panel, flag, horizons=1):
        CALLS.append(f"stage_data {flag}")
        return super().stage_data(panel, flag, horizons)

    def select_device(self, requested):
        CALLS.append("select_device")
        return super().select_device(requested)

    def describe(self):
        return "recording engine"


@contextmanager
def connect(settings):
    CALLS.append(f"connect {settings.engine}")
    yield RecordingEngine()
'''


@pytest.mark.slow
def test_a_new_engine_is_one_module_under_distributed(small_census, tmp_path, monkeypatch):
    import importlib

    import censo_forecast.distributed as distributed
    from conftest import FAST_RUN

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "recording.py").write_text(ENGINE_MODULE)
    monkeypatch.setattr(distributed, "__path__", [*distributed.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, "censo_forecast.distributed.recording", raising=False)
    raw, _ = small_census
    s = load_settings(None, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                      **{**FAST_RUN, "stages": ["IN_MED"]}, engine="recording")
    record = pipeline.run(s)
    calls = importlib.import_module("censo_forecast.distributed.recording").CALLS
    assert calls == ["connect recording", "ingest", "select_device", "stage_data IN_MED"]
    assert record["engine"] == "recording engine"
    with pytest.raises(ValueError, match="engine must be local or a module of censo_forecast.distributed"):
        load_settings(None, engine="spark_that_does_not_exist")


@pytest.mark.slow
def test_run_and_predict_with_the_cache_on_an_fsspec_filesystem(small_census, run_out, tmp_path):
    """memory:// stands for an object store: the same results as a local cache, end to end."""
    import fsspec

    from conftest import FAST_RUN

    raw, _ = small_census
    fs = fsspec.filesystem("memory")
    try:
        s = load_settings(None, raw_dir=raw, cache_dir="memory://fsspec-test/cache", out_dir=tmp_path / "out", **FAST_RUN)
        pipeline.run(s)
        assert fs.exists("/fsspec-test/cache/censo_2025.parquet") and fs.exists("/fsspec-test/cache/manifest.json")
        assert pl.read_csv(tmp_path / "out" / "resultados_finais.csv").equals(pl.read_csv(run_out / "resultados_finais.csv"))
        pipeline.run(s)  # the checkpoints' fingerprint reads the remote manifest
        assert "IN_MED: validation resumed from checkpoint" in (tmp_path / "out" / "execution_log.txt").read_text()
        result = CliRunner().invoke(app, ["predict", "--models", str(tmp_path / "out" / "models"), "--raw-dir", str(raw),
                                          "--cache-dir", "memory://fsspec-test/cache2", "--out", str(tmp_path / "pred"),
                                          "--offline"])
        assert result.exit_code == 0, result.output
        assert fs.exists("/fsspec-test/cache2/censo_2025.parquet")
        ran = pl.read_parquet(run_out / "previsoes_2026.parquet")
        predicted = pl.read_parquet(tmp_path / "pred" / "previsoes_2026.parquet")
        assert predicted.select("etapa", "CO_ENTIDADE").equals(ran.select("etapa", "CO_ENTIDADE"))
        np.testing.assert_allclose(predicted["previsao"].to_numpy(), ran["previsao"].to_numpy(), rtol=1e-6)
    finally:
        if fs.exists("/fsspec-test"):
            fs.rm("/fsspec-test", recursive=True)


@pytest.mark.parametrize("toml, message", [
    ("years = 2019", "setting years: expected a list of years, got 2019 (int)"),
    ('jobs = "two"', "setting jobs: expected a whole number, got 'two' (str)"),
    ('min_train_years = "3"', "setting min_train_years: expected a whole number, got '3' (str)"),
    ("model = 5", "setting model: expected a [model] table, got 5 (int)"),
    ('[model]\nn_estimators = "many"', "setting model.n_estimators: expected a whole number, got 'many' (str)"),
    ('timeout_s = "fast"', "setting timeout_s: expected a number, got 'fast' (str)"),
    ('stages = ["IN_MED", 3]', "setting stages: expected a list of texts"),
    ("offline = 1", "setting offline: expected true or false, got 1 (int)"),
])
def test_settings_of_the_wrong_type_are_one_line_before_any_work(tmp_path, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--raw-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "o").exists()  # nothing ran


def test_a_stage_spec_as_text_is_read_like_the_command_line():
    assert load_settings(None, stages="IN_FUND_AI, in_med").stages == ["IN_FUND_AI", "IN_MED"]


@pytest.mark.parametrize("args, message", [
    (["--years", "abc"], "cannot read the years 'abc' ('abc' is not a year or a range)"),
    (["--stages", ""], "no stage in ''"),
    (["--stages", ","], "no stage in ','"),
])
def test_bad_arguments_are_one_line_messages(tmp_path, args, message):
    result = CliRunner().invoke(app, ["run", "--offline", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_an_output_folder_that_is_a_file_is_a_clear_message(small_census, tmp_path):
    raw, _ = small_census
    (tmp_path / "taken").write_text("a file")
    result = CliRunner().invoke(app, ["run", "--offline", "--raw-dir", str(raw), "--out", str(tmp_path / "taken")])
    assert result.exit_code == 1 and f"--out {tmp_path / 'taken'} is a file, not a folder" in result.output
    assert "Traceback" not in result.output


def test_one_run_at_a_time_per_output_folder_and_a_crash_frees_it(tmp_path):
    """A second run on a folder in use stops with the holder's pid; once the holder dies
    (kill -9: no clean-up), the folder is free again."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom censo_forecast.atomic import folder_lock\n"
        f"with folder_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["run", "--offline", "--raw-dir", str(tmp_path / "raw"), "--out", str(out)])
        assert result.exit_code == 1
        assert f"{out} is in use by another censo-forecast run (process {holder.pid})" in result.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = CliRunner().invoke(app, ["run", "--offline", "--raw-dir", str(tmp_path / "raw"), "--out", str(out)])
    assert result.exit_code == 1 and "no census zips" in result.output  # past the lock, to the next check


def test_an_output_folder_that_cannot_be_written_is_a_clear_message(tmp_path, monkeypatch):
    """A read-only --out (simulated: this suite runs as root, whom permissions do not stop)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pipeline.tempfile, "TemporaryFile", refuse)
    result = CliRunner().invoke(app, ["run", "--offline", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "ro")])
    assert result.exit_code == 1 and f"--out {tmp_path / 'ro'}: cannot write there (Permission denied)" in result.output
    assert "Traceback" not in result.output
