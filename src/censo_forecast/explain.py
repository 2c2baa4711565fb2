"""SHAP explanations per stage and model, from the boosters' native fast paths.

Values are computed on the rows of the walk-forward's last origin, at every horizon (no
fit of that fold trained on them), in the models' target space: the change from the
origin year's enrollment. There, base value
plus SHAP values equals the model's output exactly; Voting's values are the mean of its
two models' values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from censo_forecast import atomic
from censo_forecast.features import FEATURES, READABLE
from censo_forecast.models import ENSEMBLE, LEARNERS
from censo_forecast.outputs import (
    FEATURE,
    FEATURE_LABEL,
    MEAN_ABS_SHAP,
    MODEL,
    ORIGIN,
    SHAP_ROWS,
    STAGE,
    shap_png,
)
from censo_forecast.validation import LastFold

log = logging.getLogger(__name__)
MAX_DISPLAY = 20


def contributions(model, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SHAP values n x f, base values n) of a fitted booster model or a Voting of them,
    from the libraries' native fast paths (`boosters`)."""
    if not hasattr(model, "contributions"):
        raise TypeError(f"cannot explain {type(model).__name__}")
    return model.contributions(X)


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def explain_stage(flag: str, fold: LastFold, shap_dir: Path, sample: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Write the beeswarm and bar plots for each model; return mean |SHAP| per feature."""
    shap_dir.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(len(fold.X_test), sample, seed)
    X = fold.X_test[rows]
    names = [READABLE.get(f, f) for f in FEATURES]
    importance = []
    for model_name in (*LEARNERS, ENSEMBLE):
        values, base = contributions(fold.learners[model_name], X)
        check = base + values.sum(axis=1)
        expected = fold.learners[model_name].predict_change(X)
        if not np.allclose(check, expected, atol=1e-3 * max(1.0, float(np.abs(expected).max()))):
            raise RuntimeError(f"SHAP values of {flag}/{model_name} do not add up to the model output")
        mean_abs = np.abs(values).mean(axis=0)
        importance.append(pl.DataFrame({
            STAGE: flag, MODEL: model_name, FEATURE: list(FEATURES), FEATURE_LABEL: names,
            MEAN_ABS_SHAP: mean_abs, SHAP_ROWS: len(rows), ORIGIN: fold.year,
        }))
        _beeswarm(values, X, names, shap_dir / shap_png("summary", flag, model_name), f"{flag} - {model_name} ({fold.year})")
        _bar(mean_abs, names, shap_dir / shap_png("bar", flag, model_name), f"{flag} - {model_name}: mean |SHAP| ({fold.year})")
    log.info("%s: SHAP on %d held-out rows of origin %d written to %s", flag, len(rows), fold.year, shap_dir)
    return pl.concat(importance).sort([MODEL, MEAN_ABS_SHAP], descending=[False, True])


def _save(fig, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _beeswarm(values: np.ndarray, X: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """SHAP's own beeswarm, which draws through pyplot on its current figure: the figure is
    closed once saved, and the user's backend is left as it was."""
    import matplotlib.pyplot as plt
    import shap

    order = np.argsort(-np.abs(values).mean(axis=0))[:MAX_DISPLAY]
    fig = plt.figure(figsize=(8, 0.35 * len(order) + 1.5))
    try:
        shap.summary_plot(values[:, order], X[:, order], feature_names=[names[i] for i in order], show=False,
                          max_display=MAX_DISPLAY, plot_size=None, color_bar_label="feature value")
        fig.axes[0].set_title(title, fontsize=11)
        fig.axes[0].set_xlabel("SHAP value (students of change from the origin year)")
        _save(fig, path)
    finally:
        plt.close(fig)


def _bar(mean_abs: np.ndarray, names: list[str], path: Path, title: str) -> None:
    order = np.argsort(-mean_abs)[:MAX_DISPLAY][::-1]
    fig = Figure(figsize=(8, 0.35 * len(order) + 1.2))
    ax = fig.subplots()
    ax.barh([names[i] for i in order], mean_abs[order], color="#3b6ea8")
    ax.set_xlabel("mean |SHAP value| (students)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
