"""censo-forecast: next-year school enrollment forecasts from INEP's School Census."""

__version__ = "0.1.0"
