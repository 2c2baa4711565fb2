"""Shared fixtures: small synthetic censuses in INEP's layout, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from censo_forecast.inep import synthetic

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_YEARS = list(range(2011, 2026))  # 2025 in the multi-table layout


@pytest.fixture(scope="session")
def small_census(tmp_path_factory):
    """14 years, ~400 schools: (raw_dir, true totals by year and stage)."""
    raw = tmp_path_factory.mktemp("raw")
    truths = synthetic.generate(raw, synthetic.SynthSettings(years=SMALL_YEARS, schools=400, seed=11))
    return raw, truths


@pytest.fixture
def make_year_zip(tmp_path):
    """Wrap CSV bytes in a zip laid out exactly as INEP's for that year."""

    def make(year: int, csv_bytes: bytes, folder: Path | None = None) -> Path:
        path = (folder or tmp_path) / f"microdados_censo_escolar_{year}.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_year_zip(path, year, csv_bytes)
        return path

    return make


# The small end-to-end run's settings (two stages, fast models), shared by every test that
# compares a run with `run_out`.
FAST_RUN = dict(offline=True, device="cpu", stages=["IN_INF_CRE", "IN_MED"], min_train_years=10, jobs=1, shap_sample=300,
                model={"n_estimators": 20, "num_leaves": 15, "max_depth": 4})


@pytest.fixture(scope="session")
def run_out(small_census, tmp_path_factory):
    """One small end-to-end run shared by report and forecast tests."""
    from censo_forecast import pipeline
    from censo_forecast.config import load_settings

    raw, _ = small_census
    tmp = tmp_path_factory.mktemp("run")
    pipeline.run(load_settings(None, raw_dir=raw, cache_dir=tmp / "cache", out_dir=tmp / "out", **FAST_RUN))
    return tmp / "out"
