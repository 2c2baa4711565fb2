"""Files the project reads back (cache, checkpoints, saved models) are verified against the
hash recorded when they were written: a damaged one is re-created or refused by name, never
read into a silent result or a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from censo_forecast import modelstore, pipeline
from censo_forecast.cli import app
from censo_forecast.config import load_settings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import ingest
from conftest import FAST_RUN


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def cache(small_census, tmp_path_factory):
    raw, _ = small_census
    folder = tmp_path_factory.mktemp("cache")
    ingest.ingest(raw, folder, [2023, 2024, 2025]).raise_for_failures()
    return raw, folder


@pytest.mark.parametrize("offset", [0, 4, 97, 1001, -9, -300])
def test_a_damaged_cache_file_is_refused_by_name_and_ingest_recreates_it(cache, tmp_path, offset):
    raw, original = cache
    folder = tmp_path / "cache"
    shutil.copytree(original, folder)
    expected = ingest.load_cache(folder, [2024])
    _flip(ingest.cache_path(folder, 2024), offset)
    with pytest.raises(ingest.IngestError, match=r"year 2024: cache file .*censo_2024\.parquet is damaged"):
        ingest.load_cache(folder, [2023, 2024])
    report = ingest.ingest(raw, folder, [2023, 2024, 2025])  # no --force needed
    assert report.written == [2024] and report.skipped == [2023, 2025]
    assert ingest.load_cache(folder, [2024]).equals(expected)


def test_a_damaged_model_file_is_refused_before_the_native_loader(run_out, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(run_out / "models", models)
    meta = json.loads((models / "metadata.json").read_text())
    booster = models / next(f for e in meta["stages"].values() for f in e["files"].values() if f.endswith(".txt"))
    good = booster.read_bytes()
    booster.write_bytes(good[: len(good) // 2])  # truncated: LightGBM's loader crashed the process on this
    result = CliRunner().invoke(app, ["predict", "--models", str(models), "--raw-dir", str(tmp_path), "--offline"])
    assert result.exit_code == 1 and f"{booster} is damaged" in result.output and "Traceback" not in result.output
    booster.write_bytes(good)
    calibration = models / next(e["calibration"] for e in meta["stages"].values() if "calibration" in e)
    _flip(calibration, 200)
    with pytest.raises(modelstore.ModelStoreError, match=f"{calibration.name} is damaged"):
        EnrollmentForecaster.load(models)


@pytest.mark.parametrize("damage", ["not utf-8", "a list", "a changed value", "a path outside", "an own model outside",
                                    "truncated"])
def test_a_damaged_models_metadata_is_a_clear_error(run_out, tmp_path, damage):
    models = tmp_path / "models"
    shutil.copytree(run_out / "models", models)
    path = models / "metadata.json"
    text = path.read_text()
    meta = json.loads(text)
    if damage == "not utf-8":
        path.write_bytes(b"\xff\xfe" + text.encode()[2:])
    elif damage == "a list":
        path.write_text("[1, 2]")
    elif damage == "a changed value":  # still valid JSON, a plausible number: caught by the content hash
        stage = next(iter(meta["stages"]))
        meta["training_years"] = meta["training_years"][1:]
        meta["stages"][stage]["modelo"] = "Persistencia"
        path.write_text(json.dumps(meta))
    elif damage == "a path outside":
        entry = next(e for e in meta["stages"].values() if e["files"])
        entry["files"][next(iter(entry["files"]))] = "../../../../etc/passwd"
        meta[modelstore.SELF_HASH] = modelstore._content_hash(meta)  # even when the metadata is consistent
        path.write_text(json.dumps(meta))
    elif damage == "an own model outside":  # a one-year model of its own (`own_files`)
        entry = next(e for e in meta["stages"].values() if e.get("own_files"))
        own = entry["own_files"][next(iter(entry["own_files"]))]
        own[next(iter(own))] = "../../../../etc/passwd"
        meta[modelstore.SELF_HASH] = modelstore._content_hash(meta)
        path.write_text(json.dumps(meta))
    else:
        path.write_text(text[: len(text) // 3])
    with pytest.raises(modelstore.ModelStoreError) as caught:
        EnrollmentForecaster.load(models)
    message = str(caught.value)
    assert "metadata.json" in message
    if damage in ("a path outside", "an own model outside"):
        assert "'../../../../etc/passwd'" in message and "refused" in message


@pytest.mark.slow
def test_a_damaged_checkpoint_redoes_its_stage(small_census, tmp_path, caplog):
    raw, _ = small_census
    s = load_settings(None, raw_dir=raw, cache_dir=tmp_path / "cache", out_dir=tmp_path / "out",
                      **{**FAST_RUN, "stages": ["IN_MED"]})
    pipeline.run(s)
    first = pl.read_csv(tmp_path / "out" / "resultados_finais.csv")
    checkpoints = tmp_path / "out" / "checkpoints"
    _flip(checkpoints / "cv_IN_MED_predictions.parquet", 300)
    caplog.clear()
    pipeline.run(s)
    assert "cv_IN_MED_predictions.parquet is missing or damaged (not the file written); IN_MED will be redone" in caplog.text
    assert "IN_MED: validated" in caplog.text
    assert pl.read_csv(tmp_path / "out" / "resultados_finais.csv").equals(first)
    (checkpoints / "cv_IN_MED.json").write_text('{"fingerprint": "ab')  # truncated
    caplog.clear()
    pipeline.run(s)
    assert "IN_MED: validated" in caplog.text and "is damaged" in caplog.text
    assert pl.read_csv(tmp_path / "out" / "resultados_finais.csv").equals(first)


def test_concurrent_readers_of_a_remote_file_all_read_it_whole():
    """fsspec's memory filesystem hands every opener the same file object: hashing a cache
    file from several workers at once must still see the whole file (it once did not)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import fsspec

    from censo_forecast import storage

    fs = fsspec.filesystem("memory")
    data = bytes(range(256)) * 40_000  # 10 MB, read in many chunks by a file-object reader
    fs.pipe("/concurrency/censo_2020.parquet", data)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            hashes = list(pool.map(lambda _: storage.sha256("memory://concurrency/censo_2020.parquet"), range(32)))
        assert set(hashes) == {hashlib.sha256(data).hexdigest()}
    finally:
        fs.rm("/concurrency", recursive=True)


def test_the_report_refuses_outputs_that_are_not_the_runs(run_out, tmp_path):
    """A planner's page must show the run's numbers: a changed output is named, not drawn."""
    out = tmp_path / "out"
    shutil.copytree(run_out, out, ignore=shutil.ignore_patterns("checkpoints", "models", ".lock"))
    meta = json.loads((out / "run_metadata.json").read_text())
    years = meta["forecast_years"]
    assert years == list(range(2026, 2026 + len(years))) and len(years) >= 2
    assert set(meta["outputs_sha256"]) == {"resultados_finais.csv", "totais_cv.csv", "erro_por_tamanho_cv.csv",
                                            "historico_matriculas.csv", *(f"previsoes_{y}.parquet" for y in years),
                                            *(f"previsoes_{y}_{level}.csv" for y in years for level in ("brasil", "ufs", "municipios"))}
    assert CliRunner().invoke(app, ["report", "--out", str(out)]).exit_code == 0  # intact: fine
    text = (out / "previsoes_2026_ufs.csv").read_text()
    (out / "previsoes_2026_ufs.csv").write_text(text.replace(",", ",1", 1))  # one number changed
    result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 1 and "previsoes_2026_ufs.csv is not the file the run wrote" in result.output
    (out / "previsoes_2026_ufs.csv").write_text(text)
    (out / "previsoes_2027.parquet").write_bytes((out / "previsoes_2027.parquet").read_bytes()[:-9] + b"\0" * 9)
    result = CliRunner().invoke(app, ["report", "--out", str(out)])  # the school rows the page's tables read
    assert result.exit_code == 1 and "previsoes_2027.parquet is not the file the run wrote" in result.output
    (out / "run_metadata.json").write_bytes(b"\xff{")
    result = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 1 and "run_metadata.json is damaged" in result.output and "Traceback" not in result.output
