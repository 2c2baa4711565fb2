"""censo-forecast: next-year school enrollment forecasts from INEP's School Census."""

__version__ = "0.1.0"

from censo_forecast.config import ModelSettings, Settings, load_settings
from censo_forecast.forecaster import EnrollmentForecaster


def load_census(cache_dir, years=None):
    """The ingested census years (all cached ones by default) as one polars DataFrame."""
    from censo_forecast.inep import ingest

    return ingest.load_cache(cache_dir, years or ingest.cached_years(cache_dir))


__all__ = ["EnrollmentForecaster", "ModelSettings", "Settings", "load_census", "load_settings"]
