"""How a last yearly change is carried years ahead: damped, as in damped-trend smoothing.

A drift forecast (the stage's aggregate change per school, `models.Drift`; the state's change
of its total, `reconcile`) compounds the last yearly change over the horizon. Undamped, one
steep year compounds five times: on the real census of Alagoas final elementary fell 5-6 % a
year up to 2015 and then flattened, and the undamped drifts put its state total 6-11 % under
the census five years ahead. Damped, the k-th year ahead counts DAMPING ** k of the change, so
h years ahead it compounds `steps(h)` times, never more than DAMPING / (1 - DAMPING) times
(benchmarks/README.md, "2026-12-07 (second session)": "The damped drift", "Deriva damped").
"""

from __future__ import annotations

DAMPING = 0.8  # 0.6 and 0.9 measured worse on the real census (benchmarks/README.md)


def steps(horizon, damping: float = DAMPING):
    """How many times a last yearly change compounds `horizon` years ahead (an int, a numpy
    array or a polars expression): DAMPING + DAMPING ** 2 + ... + DAMPING ** horizon; the
    horizon itself when `damping` is 1 (undamped)."""
    if damping == 1.0:
        return horizon
    return damping * (1 - damping**horizon) / (1 - damping)
