"""An optional municipal choropleth of the forecast change, drawn from geobr's municipal
boundaries. Only where the user asked for it (`municipal_map`), has geobr installed and a
network: the page never needs it (the tile map needs no geometry), and tests never fetch it.
"""

from __future__ import annotations

import logging

import polars as pl

from censo_forecast.outputs import STAGE
from censo_forecast.report import charts, data

log = logging.getLogger(__name__)
BOUNDARY_YEAR = 2020  # geobr's municipal boundaries closest to the census years the tool covers


def municipal_map(munis: pl.DataFrame, words, boundary_year: int = BOUNDARY_YEAR) -> dict[str, bytes]:
    """{stage: PNG} of the change to the forecast year of `munis`, or {} with a warning in the
    log when geobr or its download is unavailable (the report is written either way)."""
    try:
        import geobr  # optional: pulls geopandas and downloads boundaries
    except ImportError:
        log.warning("municipal_map: geobr is not installed (pip install geobr); the report keeps the state tile map only")
        return {}
    try:
        shapes = geobr.read_municipality(code_muni="all", year=boundary_year)
    except Exception as exc:  # network or server trouble must not cost the user the report
        log.warning("municipal_map: could not fetch municipal boundaries from geobr (%s: %s); the report keeps the state tile map only",
                    type(exc).__name__, exc)
        return {}
    change = data.with_change(munis)  # the same change as the tile map and the tables
    images = {}
    for flag in change[STAGE].unique(maintain_order=True):
        values = change.filter(pl.col(STAGE) == flag).select("CO_MUNICIPIO", "change_pct").to_pandas()
        joined = shapes.assign(CO_MUNICIPIO=shapes["code_muni"].astype("int64")).merge(values, on="CO_MUNICIPIO", how="left")
        spread = float(values["change_pct"].abs().quantile(0.95))  # NaN when no municipality has a change
        largest = spread if spread > 0.01 else 0.01
        fig, ax = charts.subplots(figsize=(6, 6))
        joined.plot(column="change_pct", cmap="RdBu", vmin=-largest, vmax=largest, linewidth=0, ax=ax, legend=True,
                    missing_kwds={"color": "#eceef2"})
        ax.set_axis_off()
        ax.set_title(f"{words.stage(flag)}: {words('map')}", fontsize=10)
        images[flag] = charts.figure_png(fig)
    return images
