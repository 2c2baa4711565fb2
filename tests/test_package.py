"""Package-level promises: a light start for data commands, the public API names."""

import subprocess
import sys

import pytest


def test_data_commands_do_not_import_the_model_libraries():
    code = "import sys, censo_forecast.inep.ingest, censo_forecast.inep.download, censo_forecast.cli; " \
           "print(sorted(m for m in ('sklearn', 'lightgbm', 'xgboost', 'shap') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_public_api_names_resolve_lazily():
    import censo_forecast

    assert censo_forecast.EnrollmentForecaster.__name__ == "EnrollmentForecaster"
    assert censo_forecast.ModelSettings().n_estimators > 0
    with pytest.raises(AttributeError, match="does_not_exist"):
        _ = censo_forecast.does_not_exist
