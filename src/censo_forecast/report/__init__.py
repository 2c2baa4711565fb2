"""report.html: the forecast for a planner, then the validation for an analyst.

`data` reads a run's outputs, `charts` draws them, `i18n` words them in Portuguese or
English, `page` assembles the one self-contained page; `choropleth` is the optional
municipal map (geobr).
"""

from censo_forecast.report.data import DamagedOutput
from censo_forecast.report.page import build_report

__all__ = ["build_report", "DamagedOutput"]
