"""The names of what a run writes, in one place: the pipeline writes these files, the
report reads them, and the README documents them.

File and column names are Portuguese where planners read them (the seed's
`resultados_finais.csv` and its columns); the rest of the code is English.
"""

from __future__ import annotations

RESULTS = "resultados_finais.csv"
CV_PREDICTIONS = "cv_predictions.parquet"
COVERAGE = "cobertura_intervalos_cv.csv"
ERROR_BY_SIZE = "erro_por_tamanho_cv.csv"
CV_TOTALS = "totais_cv.csv"
HISTORY = "historico_matriculas.csv"  # census enrollment per stage, state and year: the fan charts' past
METADATA = "run_metadata.json"
REPORT = "report.html"
LOG = "execution_log.txt"
MODELS = "models"
CHECKPOINTS = "checkpoints"
SHAP = "shap"
SHAP_IMPORTANCE = "shap_importance.csv"
AREA_LEVELS = ("municipios", "ufs", "brasil")

# Values of the `modelo` column besides the boosters' names (boosters.LEARNERS).
PERSISTENCE, DRIFT, COHORT, ENSEMBLE = "Persistencia", "Deriva", "Coorte", "Voting"

# Last census year's enrollment of a school's stage (the persistence forecast) in the
# forecast files; the feature the models read it from is features.ANCHOR.
LAST_ENROLLMENT = "matriculas_ultimo_ano"
FORECAST = "previsao"
HORIZON = "horizonte"  # years ahead of the last census year (cv_predictions: of the origin year)
ORIGIN = "ano_origem"  # cv_predictions: the census year the forecast was made from
SCHOOL_FORECAST_COLUMNS = (
    "CO_ENTIDADE", "NO_ENTIDADE", "CO_MUNICIPIO", "CO_UF", "etapa", "modelo", LAST_ENROLLMENT, FORECAST,
    "limite_inferior_80", "limite_superior_80", "limite_inferior_95", "limite_superior_95", HORIZON,
)


def forecast_file(year: int | str, level: str | None = None, suffix: str = ".csv") -> str:
    """previsoes_{year}.csv|.parquet per school; previsoes_{year}_{level}.csv per area level."""
    return f"previsoes_{year}{'_' + level if level else ''}{suffix}"


def report_inputs(forecast_years: list[int]) -> list[str]:
    """The files the report reads: their sha256 goes into run_metadata.json, and the report
    refuses a file that is no longer the one the run wrote."""
    files = [RESULTS, CV_TOTALS, ERROR_BY_SIZE, HISTORY]
    return files + [forecast_file(year, level, suffix) for year in forecast_years
                    for level, suffix in ((None, ".parquet"), *((level, ".csv") for level in AREA_LEVELS))]


def shap_png(kind: str, flag: str, model: str) -> str:
    """kind: "summary" (beeswarm) or "bar"."""
    return f"SHAP_{kind}_{flag}_{model}.png"
