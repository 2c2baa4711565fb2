"""Every written name has one home: the package never spells an output column name (ours in
`outputs`, INEP's keys in `catalog`) as a literal anywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import censo_forecast
from censo_forecast import outputs
from censo_forecast.inep import catalog

PACKAGE = Path(censo_forecast.__file__).parent
# names a run writes as columns, with the one module allowed to spell them
HOMES = {
    **{value: "outputs.py" for name, value in vars(outputs).items()
       if name.isupper() and isinstance(value, str) and not value.endswith((".csv", ".json", ".html", ".txt", ".parquet"))
       and name not in ("MODELS", "CHECKPOINTS", "SHAP", "MUNICIPALITIES", "STATES", "COUNTRY")},
    **{value: "outputs.py" for value in (*outputs.BOUNDS, outputs.COVERAGE_80, outputs.COVERAGE_95)},
    catalog.YEAR: "inep/catalog.py",
    catalog.SCHOOL: "inep/catalog.py",
}
# model names are values of the `modelo` column, spelled where the models are named
HOMES = {k: v for k, v in HOMES.items() if k not in (outputs.PERSISTENCE, outputs.DRIFT, outputs.COHORT, outputs.ENSEMBLE)}


def literals(tree: ast.AST):
    """(line, text) of every string constant, and of the constant parts of f-strings."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value for v in node.values if isinstance(v, ast.Constant))


WORDS = "report/i18n.py"  # the report's words for the reader ("real" is Portuguese for "actual"), never column names


def stray_names(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(root).as_posix()
        if module == WORDS:
            continue
        for line, text in literals(ast.parse(path.read_text(encoding="utf-8"))):
            home = HOMES.get(text)
            if home is not None and home != module:
                found.append(f"{module}:{line}: {text!r} (home: {home})")
            elif text.startswith("limite_") and module != "outputs.py":  # a bound's name built by hand
                found.append(f"{module}:{line}: {text!r} (home: outputs.bound)")
    return sorted(set(found))  # an f-string's text is seen whole and as its parts


def test_the_registry_holds_the_names_the_files_carry():
    assert {"etapa", "modelo", "horizonte", "previsao", "matriculas_ultimo_ano", "limite_inferior_80", "Escolhido",
            "MAE_Media_CV", "previsao_escolas", "previsao_novas_ofertas", "y_true", "NU_ANO_CENSO"} <= set(HOMES)


def test_no_output_column_name_is_spelled_outside_its_home():
    assert stray_names() == []


def test_the_scan_finds_a_stray_name(tmp_path):
    """The scan can fail: a module spelling "etapa", one building a bound by hand, one re-typing INEP's year."""
    (tmp_path / "outputs.py").write_text('STAGE = "etapa"\n')
    (tmp_path / "report.py").write_text('import polars as pl\nrows = pl.col("etapa")\n')
    (tmp_path / "charts.py").write_text('pct = 80\nname = f"limite_superior_{pct}"\n')
    (tmp_path / "panel.py").write_text('YEAR = "NU_ANO_CENSO"\n')
    found = stray_names(tmp_path)
    assert len(found) == 3
    assert any(f.startswith("report.py:2: 'etapa'") for f in found)
    assert any(f.startswith("charts.py:2: 'limite_superior_'") for f in found)
    assert any(f.startswith("panel.py:1: 'NU_ANO_CENSO'") for f in found)


@pytest.mark.parametrize("side, level, expected", [("inferior", 80, "limite_inferior_80"), ("superior", 95, "limite_superior_95")])
def test_bound_names(side, level, expected):
    assert outputs.bound(side, level) == expected
    with pytest.raises(ValueError, match="inferior or superior"):
        outputs.bound("lower", level)
