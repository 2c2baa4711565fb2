"""The seams: `StageData` is an interface with two implementations, models are built in one
factory, and importing the package changes nothing in the user's process."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import censo_forecast
from censo_forecast.stagedata import LocalStageData, StageData

PACKAGE = Path(censo_forecast.__file__).parent
MODEL_CLASSES = {"ChangeRegressor", "Persistence", "CohortProgression", "Drift", "Voting", "ByHorizon"}


def test_stage_data_is_an_interface_with_a_local_and_a_dask_implementation():
    pytest.importorskip("dask.distributed")
    from censo_forecast.distributed.dask import DaskStageData

    assert inspect.isabstract(StageData)
    with pytest.raises(TypeError):
        StageData()  # type: ignore[abstract]
    for implementation in (LocalStageData, DaskStageData):
        assert issubclass(implementation, StageData) and not inspect.isabstract(implementation), implementation


def constructions(root: Path = PACKAGE) -> list[str]:
    """Where a model class is called (constructed) outside `models.py` and `learners.py`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(root).as_posix()
        if module in ("models.py", "learners.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in MODEL_CLASSES:
                    found.append(f"{module}:{node.lineno}: {name}")
    return found


def test_models_are_built_in_one_factory(tmp_path):
    assert constructions() == []
    (tmp_path / "validation.py").write_text("from censo_forecast import models\nm = models.Drift(0, 1)\n")
    assert constructions(tmp_path) == ["validation.py:2: Drift"]  # the scan can fail


def test_importing_the_package_changes_nothing_in_the_process():
    """No OpenMP policy set and no matplotlib backend chosen on import (both happen when used)."""
    code = ("import os, matplotlib, matplotlib.rcsetup as rc; "
            "import censo_forecast.pipeline, censo_forecast.explain, censo_forecast.report.charts, censo_forecast.distributed.dask; "
            "backend = dict.__getitem__(matplotlib.rcParams, 'backend'); "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'), backend is rc._auto_backend_sentinel)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["unset", "True"]
