"""censo-forecast: next-year school enrollment forecasts from INEP's School Census."""

__version__ = "0.1.0"
__all__ = ["EnrollmentForecaster", "ModelSettings", "Settings", "load_census", "load_settings"]

# Imported on first use (PEP 562): `censo-forecast ingest` or `download` should not pay for
# scikit-learn, LightGBM and XGBoost, which the forecaster imports.
_LAZY = {
    "EnrollmentForecaster": "censo_forecast.forecaster",
    "ModelSettings": "censo_forecast.config",
    "Settings": "censo_forecast.config",
    "load_settings": "censo_forecast.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'censo_forecast' has no attribute {name!r}")


def load_census(cache_dir, *, years=None):
    """The ingested census as one polars DataFrame, the input of `EnrollmentForecaster`.

    Parameters: `cache_dir`, the Parquet cache (`censo-forecast ingest`; a folder or an
    fsspec URL); `years`, the census years to load (default: every cached year).
    Returns one row per school and year with INEP's column names (`catalog.CACHE_SCHEMA`).
    Raises `IngestError` when a year is not in the cache.
    """
    from censo_forecast.inep import ingest

    return ingest.load_cache(cache_dir, years or ingest.cached_years(cache_dir))
