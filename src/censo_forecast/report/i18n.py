"""The report's words in Brazilian Portuguese (the default: its readers are the secretariats)
and English, and numbers written the way each reader writes them (1.234,5 or 1,234.5).

Column names of the CSV files are never translated: a planner who downloads rows finds the
same names as in the forecast files.
"""

from __future__ import annotations

import math

from censo_forecast.config import REPORT_LANGUAGES as LANGUAGES
from censo_forecast.inep import catalog

DEFAULT_LANGUAGE = LANGUAGES[0]

# (decimal mark, thousands separator)
_SEPARATORS = {"pt-BR": (",", "."), "en": (".", ",")}

_TEXTS: dict[str, dict[str, str]] = {
    "title": {"pt-BR": "Previsão de matrículas escolares", "en": "School enrollment forecast"},
    "subtitle": {
        "pt-BR": "Censo Escolar do INEP, {first}–{last}: matrículas por etapa para {years}, com faixas de incerteza.",
        "en": "INEP School Census, {first}–{last}: enrollment by stage for {years}, with uncertainty ranges."},
    "country": {"pt-BR": "Brasil", "en": "Brazil"},
    "area_partial": {"pt-BR": "área coberta ({count} UFs)", "en": "area covered ({count} states)"},
    "headline": {"pt-BR": "Quantos alunos: {area}", "en": "How many students: {area}"},
    "headline_note": {
        "pt-BR": "Matrículas do último censo e a previsão para cada ano; abaixo de cada previsão, a faixa de 80 % "
                 "(em 8 de cada 10 casos testados o valor real ficou dentro dela). Variação: do último censo a {year}.",
        "en": "Enrollment in the last census and the forecast for each year; under each forecast, its 80 % range "
              "(in 8 of 10 tested cases the actual value fell inside it). Change: from the last census to {year}."},
    "stage": {"pt-BR": "Etapa", "en": "Stage"},
    "path": {"pt-BR": "Trajetória", "en": "Path"},
    "census": {"pt-BR": "Censo {year}", "en": "Census {year}"},
    "change": {"pt-BR": "Variação até {year}", "en": "Change to {year}"},
    "students": {"pt-BR": "alunos", "en": "students"},
    "range80": {"pt-BR": "{low}–{high}", "en": "{low}–{high}"},
    "pictures": {"pt-BR": "Onde cresce e onde diminui", "en": "Where it grows and where it shrinks"},
    "fans": {"pt-BR": "Trajetória por etapa: censo, depois a previsão com faixas de 80 % e 95 %",
             "en": "Path by stage: census, then the forecast with 80 % and 95 % bands"},
    "state_fans": {"pt-BR": "Trajetória de cada UF", "en": "Each state's path"},
    "map": {"pt-BR": "Variação prevista por UF", "en": "Forecast change by state"},
    "map_note": {
        "pt-BR": "Cada quadrado é uma UF, na sua posição aproximada; a cor e o número dão a variação das matrículas "
                 "do último censo ao ano escolhido (previsoes_*_ufs.csv).",
        "en": "Each square is a state, in its approximate place; colour and number give the change in enrollment "
              "from the last census to the chosen year (previsoes_*_ufs.csv)."},
    "year": {"pt-BR": "Ano", "en": "Year"},
    "no_data": {"pt-BR": "sem dados", "en": "no data"},
    "movers": {"pt-BR": "Maiores crescimentos e quedas previstos até {year}",
               "en": "Largest expected growth and decline to {year}"},
    "none": {"pt-BR": "nenhum", "en": "none"},
    "growth": {"pt-BR": "Crescimento", "en": "Growth"},
    "decline": {"pt-BR": "Queda", "en": "Decline"},
    "municipality": {"pt-BR": "Município", "en": "Municipality"},
    "municipalities": {"pt-BR": "Municípios", "en": "Municipalities"},
    "school": {"pt-BR": "Escola", "en": "School"},
    "schools": {"pt-BR": "Escolas", "en": "Schools"},
    "uf": {"pt-BR": "UF", "en": "State"},
    "forecast_in": {"pt-BR": "Previsão {year}", "en": "Forecast {year}"},
    "students_change": {"pt-BR": "Alunos", "en": "Students"},
    "find": {"pt-BR": "Encontre seu município", "en": "Find your municipality"},
    "find_note": {
        "pt-BR": "Previsão de cada município por etapa e ano, com a faixa de 80 %. Busque pelo nome ou código, "
                 "filtre por UF e etapa, ordene clicando no cabeçalho e baixe as linhas filtradas em CSV "
                 "(valores arredondados; os arquivos previsoes_*_municipios.csv têm os valores completos).",
        "en": "Each municipality's forecast by stage and year, with its 80 % range. Search by name or code, filter "
              "by state and stage, sort by clicking a header and download the filtered rows as CSV (rounded; "
              "previsoes_*_municipios.csv hold the full values)."},
    "search": {"pt-BR": "Buscar", "en": "Search"},
    "search_muni": {"pt-BR": "nome ou código do município", "en": "municipality name or code"},
    "search_school": {"pt-BR": "município, escola ou código", "en": "municipality, school or code"},
    "all_ufs": {"pt-BR": "todas as UFs", "en": "all states"},
    "all_stages": {"pt-BR": "todas as etapas", "en": "all stages"},
    "download": {"pt-BR": "Baixar CSV", "en": "Download CSV"},
    "more": {"pt-BR": "Mostrar mais", "en": "Show more"},
    "shown": {"pt-BR": "{shown} de {total} linhas", "en": "{shown} of {total} rows"},
    "needs_script": {"pt-BR": "A busca precisa de JavaScript; os mesmos números estão em previsoes_*_municipios.csv.",
                     "en": "The search needs JavaScript; the same numbers are in previsoes_*_municipios.csv."},
    "school_table": {"pt-BR": "Escolas do município", "en": "Schools of a municipality"},
    "school_note": {
        "pt-BR": "Digite o município (ou a escola) para ver a previsão de cada escola por etapa.",
        "en": "Type the municipality (or the school) to see each school's forecast by stage."},
    "school_type": {"pt-BR": "Digite um município ou uma escola para ver as escolas.",
                    "en": "Type a municipality or a school to see its schools."},
    "school_limit": {
        "pt-BR": "Esta rodada tem {schools} escolas, acima do limite de {limit} desta página (report_max_schools): "
                 "a previsão de cada escola está em previsoes_{{ano}}.csv e .parquet.",
        "en": "This run has {schools} schools, above this page's limit of {limit} (report_max_schools): each "
              "school's forecast is in previsoes_{{year}}.csv and .parquet."},
    "quality": {"pt-BR": "Quão boa é a previsão", "en": "How good the forecast is"},
    "quality_words": {
        "pt-BR": "Testada como se cada ano de {first} a {last} fosse o futuro (o modelo só via os censos anteriores), "
                 "a previsão um ano à frente errou em média {mae} alunos por escola nas etapas principais; "
                 "com o modelo escolhido a cada ano só com os anos já conhecidos, como a previsão publicada o escolhe, "
                 "{vs_p} que repetir o último censo (Persistência). O modelo escolhido teve {vs_c} que o método de "
                 "coorte dos planejadores. "
                 "{h} anos à frente: {vs_p_h} que a Persistência e {vs_c_h} que a Coorte. As faixas de 80 % contiveram "
                 "o valor real em {cov80} das escolas e as de 95 %, em {cov95}.",
        "en": "Tested as if each year from {first} to {last} were the future (the model saw only earlier censuses), "
              "the one-year-ahead forecast missed by {mae} students per school on average on the major stages; "
              "with the model chosen each year from the years known then, as the published forecast chooses it, "
              "{vs_p} than repeating the last census (Persistence). The chosen model had {vs_c} than the planners' "
              "cohort method. "
              "{h} years ahead: {vs_p_h} than Persistence and {vs_c_h} than Coorte. The 80 % ranges held the "
              "actual value for {cov80} of schools, the 95 % ranges for {cov95}."},
    "demography_used": {
        "pt-BR": "As previsões usam os nascimentos e a população por município ({source}): quantas crianças chegam "
                 "à idade de cada etapa, conhecido anos antes (modelo Demografia e variáveis dos modelos).",
        "en": "The forecasts use births and population per municipality ({source}): how many children reach each "
              "stage's age, known years ahead (the Demografia model and the models' features).",
    },
    "births_blend": {
        "pt-BR": "Os totais por município de {stages} combinam a soma das escolas com a projeção pelos nascimentos do "
                 "município, com o peso entre parênteses que o teste nos anos passados escolheu; a diferença está na "
                 "coluna ajuste_nascimentos dos arquivos por município, e as previsões por escola não mudam.",
        "en": "The municipal totals of {stages} combine the schools' sum with the projection from the municipality's "
              "births, at the weight in brackets that the test on past years chose; the difference is the "
              "ajuste_nascimentos column of the municipal files, and the school forecasts are unchanged.",
    },
    "births_weight_by_horizon": {
        "pt-BR": "{one} um ano à frente, {beyond} mais à frente",
        "en": "{one} one year ahead, {beyond} further ahead",
    },
    "unvalidated": {
        "pt-BR": "Não há anos de censo suficientes para testar {years} ano(s) à frente ({stages}): essas previsões "
                 "seguem o modelo escolhido para {source} ano(s) à frente e não têm faixa.",
        "en": "There are too few census years to test {years} year(s) ahead ({stages}): those forecasts keep the "
              "model chosen for {source} year(s) ahead and have no range.",
    },
    "unvalidated_none": {
        "pt-BR": "Não há anos de censo suficientes para testar {years} ano(s) à frente ({stages}): essas previsões "
                 "vêm do modelo Voting e não têm faixa.",
        "en": "There are too few census years to test {years} year(s) ahead ({stages}): those forecasts come from "
              "the Voting model and have no range.",
    },
    "demography_none": {
        "pt-BR": "Sem dados de nascimentos e população: as previsões usam só o Censo Escolar (com --demography, "
                 "os nascimentos dizem anos antes quantas crianças chegam a cada etapa).",
        "en": "Without births and population data: the forecasts use the School Census alone (with --demography, "
              "births tell years ahead how many children reach each stage).",
    },
    "published_check": {
        "pt-BR": "Esse teste escolhe o modelo a cada ano como a previsão publicada, mas deixa de fora o reajuste no "
                 "último censo, as novas ofertas e as somas por município e UF. O que o produto publica foi testado "
                 "à parte, no censo real de {census} (origens {first} a {last}, {births}, contra os censos "
                 "seguintes, que não tinha visto): por escola, um ano à frente, {skill} menos erro que a "
                 "Persistência nas etapas principais; cinco anos à frente, {skill5}. O total do estado errou "
                 "{state} um ano à frente e {state5} cinco anos à frente, conforme a etapa.",
        "en": "That test chooses the model each year as the published forecast does, but leaves out the refit on "
              "the last census, the new offerings and the sums by municipality and state. What the product "
              "publishes was tested separately, on the real census of {census} (origins {first} to {last}, {births}, "
              "against the later censuses it had not seen): per school, one year ahead, {skill} less error "
              "than Persistence on the major stages; five years ahead, {skill5}. The state total was off by "
              "{state} one year ahead and {state5} five years ahead, depending on the stage."},
    "published_range": {"pt-BR": "de {low} a {high}", "en": "{low} to {high}"},
    "published_with_births": {"pt-BR": "com nascimentos e população, como esta execução",
                              "en": "with births and population, as in this run"},
    "published_without_births": {"pt-BR": "sem nascimentos, como esta execução", "en": "without births, as in this run"},
    "less_error": {"pt-BR": "{pct} menos erro", "en": "{pct} less error"},
    "more_error": {"pt-BR": "{pct} mais erro", "en": "{pct} more error"},
    "quality_table_note": {
        "pt-BR": "Erro médio absoluto (alunos por escola) do modelo escolhido, e quanto ele reduz o erro da "
                 "Persistência e da Coorte (positivo: melhor); cobertura das faixas, média dos anos testados.",
        "en": "Mean absolute error (students per school) of the chosen model, and how much it cuts the error of "
              "Persistence and Coorte (positive: better); coverage of the ranges, mean over the tested years."},
    "model": {"pt-BR": "Modelo", "en": "Model"},
    "error_h": {"pt-BR": "Erro {h} ano(s)", "en": "Error {h} yr"},
    "vs_p_h": {"pt-BR": "vs Persist. {h}a", "en": "vs Persist. {h}y"},
    "vs_c_h": {"pt-BR": "vs Coorte {h}a", "en": "vs Coorte {h}y"},
    "coverage": {"pt-BR": "Cobertura {level} %", "en": "Coverage {level} %"},
    "skill_chart": {"pt-BR": "Redução do erro do modelo escolhido (%)", "en": "Error cut by the chosen model (%)"},
    "skill_vs": {"pt-BR": "vs {baseline}, {h} ano(s)", "en": "vs {baseline}, {h} yr"},
    "horizons": {"pt-BR": "Erro por horizonte, em detalhe", "en": "Error by horizon, in detail"},
    "horizons_note": {
        "pt-BR": "A previsão do ano Y com h anos de antecedência foi feita a partir do censo Y − h, com modelos que "
                 "não viram nada depois dele. MAE em alunos por escola; APE_UFs: erro percentual médio dos totais das UFs.",
        "en": "The forecast of year Y h years ahead was made from census Y − h with models that saw nothing after "
              "it. MAE in students per school; APE_UFs: mean absolute percentage error of state totals."},
    "years_ahead": {"pt-BR": "anos à frente", "en": "years ahead"},
    "mae_axis": {"pt-BR": "MAE (alunos por escola)", "en": "MAE (students per school)"},
    "chosen": {"pt-BR": "escolhido", "en": "chosen"},
    "analyst": {"pt-BR": "Para analistas", "en": "For analysts"},
    "metrics": {"pt-BR": "Tabela completa de métricas (resultados_finais.csv)", "en": "Full metrics table (resultados_finais.csv)"},
    "stage_details": {"pt-BR": "Validação e SHAP: {stage}", "en": "Validation and SHAP: {stage}"},
    "shap": {"pt-BR": "O que move a previsão (SHAP, última origem da validação, todos os horizontes)",
             "en": "What drives the forecast (SHAP, last walk-forward origin, every horizon)"},
    "run": {"pt-BR": "Execução: configuração, versões e tempos", "en": "Run: configuration, versions and timings"},
    "totals_title": {"pt-BR": "{stage}: total real e previsto um ano à frente", "en": "{stage}: actual and one-year-ahead total"},
    "actual": {"pt-BR": "real", "en": "actual"},
    "test_year": {"pt-BR": "ano testado", "en": "test year"},
    "size_title": {"pt-BR": "{stage}: erro por tamanho da escola", "en": "{stage}: error by school size"},
    "census_line": {"pt-BR": "censo", "en": "census"},
    "forecast_line": {"pt-BR": "previsão", "en": "forecast"},
    "state_fans_title": {"pt-BR": "{stage}: censo e previsão de cada UF (faixas de 80/95 %)",
                         "en": "{stage}: each state's census and forecast (80/95 % bands)"},
    "horizon_title": {"pt-BR": "{stage}: erro por horizonte", "en": "{stage}: error by horizon"},
    "unbounded": {"pt-BR": "sem faixa (horizonte não validado)", "en": "no range (horizon not validated)"},
}

# Where each state's tile sits (row, column): the country's shape, roughly, without a map file.
TILES: dict[str, tuple[int, int]] = {
    "RR": (0, 2), "AP": (0, 4),
    "AM": (1, 1), "PA": (1, 3), "MA": (1, 4), "CE": (1, 5), "RN": (1, 6),
    "AC": (2, 0), "RO": (2, 1), "MT": (2, 2), "TO": (2, 3), "PI": (2, 4), "PE": (2, 5), "PB": (2, 6),
    "MS": (3, 2), "GO": (3, 3), "DF": (3, 4), "BA": (3, 5), "AL": (3, 6),
    "PR": (4, 2), "SP": (4, 3), "MG": (4, 4), "ES": (4, 5), "SE": (4, 6),
    "SC": (5, 2), "RJ": (5, 4),
    "RS": (6, 2),
}


class Words:
    """The texts and number format of one language."""

    def __init__(self, lang: str = DEFAULT_LANGUAGE):
        if lang not in LANGUAGES:
            raise ValueError(f"report language must be one of {', '.join(LANGUAGES)}, not {lang!r}")
        self.lang = lang
        self.decimal, self.group = _SEPARATORS[lang]

    def __call__(self, key: str, **values) -> str:
        return _TEXTS[key][self.lang].format(**values)

    def stage(self, flag: str) -> str:
        stage = catalog.stage(flag)
        return stage.label_pt if self.lang == "pt-BR" else stage.label[:1].upper() + stage.label[1:]

    def integer(self, value) -> str:
        """A count, rounded half up (as the page's script rounds), with thousands separators."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        rounded = round_half_up(value)
        text = f"{abs(rounded):,}".replace(",", self.group)
        return f"-{text}" if rounded < 0 else text

    def number(self, value, decimals: int = 1) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        text = f"{value:,.{decimals}f}"
        return text.replace(",", "\0").replace(".", self.decimal).replace("\0", self.group)

    def percent(self, fraction, signed: bool = True) -> str:
        """0.0234 -> '+2,3 %', rounded half up in tenths of a per cent, as the page's script does."""
        if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
            return "–"
        return format_tenths(round_half_up(fraction * 1000), self.decimal, signed)

    def script_settings(self) -> dict:
        """What the page's script needs to write numbers and words like the page does."""
        keys = ("shown", "more", "no_data", "school_type", "all_ufs", "all_stages")
        return {"lang": self.lang, "decimal": self.decimal, "group": self.group, "texts": {k: _TEXTS[k][self.lang] for k in keys}}


def round_half_up(value) -> int:
    """Python's round() rounds halves to even; the page's Math.round rounds them up: use one rule."""
    return int(math.floor(float(value) + 0.5))


def format_tenths(tenths: int, decimal: str, signed: bool = True) -> str:
    """23 -> '+2,3 %' (the page's script writes percentages the same way)."""
    sign = "+" if signed and tenths > 0 else ("-" if tenths < 0 else "")
    return f"{sign}{abs(tenths) // 10}{decimal}{abs(tenths) % 10} %"
