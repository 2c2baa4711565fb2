"""The names of what a run writes, in one place: the pipeline writes these files and
columns, the report reads them, and the README documents them.

File and column names are Portuguese where planners read them (the seed's
`resultados_finais.csv` and its columns); the rest of the code is English. INEP's own
column names (CO_ENTIDADE, NU_ANO_CENSO, ...) keep INEP's spelling and live in
`inep.catalog`. `tests/test_outputs.py` fails when a name below is spelled as a literal
anywhere else in the package.
"""

from __future__ import annotations

import re

from censo_forecast.inep.catalog import SCHOOL

# ------------------------------------------------------------------ files
RESULTS = "resultados_finais.csv"
CV_PREDICTIONS = "cv_predictions.parquet"
COVERAGE = "cobertura_intervalos_cv.csv"
ERROR_BY_SIZE = "erro_por_tamanho_cv.csv"
CV_TOTALS = "totais_cv.csv"
HISTORY = "historico_matriculas.csv"  # census enrollment per stage, state and year: the fan charts' past
METADATA = "run_metadata.json"
# present while a command writes the folder, removed once its record is written: a folder that
# keeps it was left by a command that stopped (a crash, SIGTERM) and mixes two runs' files
INCOMPLETE = "EXECUCAO_INCOMPLETA.txt"
REPORT = "report.html"
LOG = "execution_log.txt"
MODELS = "models"
CHECKPOINTS = "checkpoints"
SHAP = "shap"
SHAP_IMPORTANCE = "shap_importance.csv"
MUNICIPALITIES, STATES, COUNTRY = AREA_LEVELS = ("municipios", "ufs", "brasil")

# ------------------------------------------------------------------ models
# Values of the `modelo` column besides the boosters' names (boosters.LEARNERS).
PERSISTENCE, DRIFT, COHORT, ENSEMBLE = "Persistencia", "Deriva", "Coorte", "Voting"
DEMOGRAPHY = "Demografia"  # the last census times the birth-cohort ratio (demography/known.py)
SUM_OF_PARTS = "Soma_das_etapas"  # a stage forecast as the sum of its parts' (all elementary = early + final)

# ------------------------------------------------------------------ columns every table shares
STAGE = "etapa"  # the stage's offer flag (IN_MED)
MODEL = "modelo"
HORIZON = "horizonte"  # years ahead of the last census year (cv_predictions: of the origin year)
ORIGIN = "ano_origem"  # cv_predictions, shap_importance: the census year the forecast was made from
ROWS = "n"  # rows (schools) a metric was computed on

# ------------------------------------------------------------------ forecast files
# Last census year's enrollment of a school's stage (the persistence forecast); the feature
# the models read it from is features.ANCHOR.
LAST_ENROLLMENT = "matriculas_ultimo_ano"
FORECAST = "previsao"
INTERVAL_LEVELS = (80, 95)  # per cent: the central intervals every forecast carries


def bound(side: str, level: int) -> str:
    """limite_inferior_80, limite_superior_95, ...: `side` is "inferior" or "superior"."""
    if side not in ("inferior", "superior"):
        raise ValueError(f"bound side must be inferior or superior, not {side!r}")
    return f"limite_{side}_{level}"


LOWER_80, UPPER_80, LOWER_95, UPPER_95 = (bound(side, level) for level in INTERVAL_LEVELS for side in ("inferior", "superior"))
BOUNDS = (LOWER_80, UPPER_80, LOWER_95, UPPER_95)
SCHOOL_FORECAST_COLUMNS = (
    SCHOOL, "NO_ENTIDADE", "CO_MUNICIPIO", "CO_UF", STAGE, MODEL, LAST_ENROLLMENT, FORECAST, *BOUNDS, HORIZON,
)
# area files: the sum of the school forecasts, the enrollment expected in offerings that will open,
# and the births adjustment
SCHOOLS_FORECAST = "previsao_escolas"
NEW_OFFERINGS_FORECAST = "previsao_novas_ofertas"
BIRTHS_ADJUSTMENT = "ajuste_nascimentos"  # with births: the municipal births blend (`municipal`)
COUNTRY_KEY = "pais"  # the national file's key column ("BR")

# ------------------------------------------------------------------ cv_predictions.parquet
ACTUAL = "y_true"  # the census enrollment a walk-forward forecast is scored against

# ------------------------------------------------------------------ resultados_finais.csv
R2_MEAN, RMSE_MEAN, MAE_MEAN, WAPE_MEAN = "R2_Media_CV", "RMSE_Media_CV", "MAE_Media_CV", "WAPE_Media_CV"
SKILL_VS_PERSISTENCE = "Skill_MAE_vs_Persistencia"
SKILL_VS_COHORT = "Skill_MAE_vs_Coorte"
# on the chosen rows: the skill against persistence of the choice as it is published, made at
# each origin from the folds known then (a model's own mean was chosen knowing every fold)
SKILL_OF_CHOICE = "Skill_Escolha_vs_Persistencia"
FOLDS = "n_folds"
SAMPLES = "n_amostras"
COVERAGE_80_MEAN, COVERAGE_95_MEAN = "Cobertura_80_CV", "Cobertura_95_CV"
APE_MUNICIPALITIES, APE_STATES = "APE_Municipios_Media_CV", "APE_UFs_Media_CV"
CHOSEN = "Escolhido"
SEED_COLUMNS = (STAGE, MODEL, R2_MEAN, RMSE_MEAN, MAE_MEAN, WAPE_MEAN, SKILL_VS_PERSISTENCE)
# per (horizon, test year) fold metrics, in students
MAE, RMSE, R2, WAPE = "MAE", "RMSE", "R2", "WAPE"

# ------------------------------------------------------------------ the other validation tables


def coverage_column(level: int) -> str:
    """cobertura_intervalos_cv.csv: the share of truths inside the interval of `level` per cent."""
    return f"Cobertura_{level}"


COVERAGE_80, COVERAGE_95 = (coverage_column(level) for level in INTERVAL_LEVELS)
SIZE_BIN, SIZE_LABEL = "faixa", "faixa_tamanho"  # erro_por_tamanho_cv.csv
ACTUAL_TOTAL = "real"  # totais_cv.csv: the census total (beside FORECAST)
ENROLLMENT = "matriculas"  # historico_matriculas.csv
# shap_importance.csv
FEATURE, FEATURE_LABEL, MEAN_ABS_SHAP, SHAP_ROWS = "feature", "feature_label", "mean_abs_shap", "n_rows"


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


def is_shap_png(name: str, flag: str) -> bool:
    """Whether `name` is a SHAP plot of `flag` itself: IN_FUND_AI's match IN_FUND's pattern, and are not its."""
    return re.fullmatch(rf"SHAP_(summary|bar)_{re.escape(flag)}_[A-Za-z]+\.png", name) is not None
