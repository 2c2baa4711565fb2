"""Logging to the console and to the output folder's execution log, and what each run records."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

LOG_NAME = "execution_log.txt"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_PACKAGES = ("censo-forecast", "polars", "pyarrow", "numpy", "scikit-learn", "lightgbm", "xgboost", "shap", "httpx")


def setup_logging(out_dir: Path | None = None, verbose: bool = False) -> Path | None:
    """Console always; out_dir/execution_log.txt (appended) when an output folder is given."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_censo_forecast", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    console._censo_forecast = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOG_NAME
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler._censo_forecast = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    for noisy in ("httpx", "httpcore", "matplotlib", "shap", "distributed", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_header(command: str, settings: dict, extra: dict | None = None) -> dict:
    """Log and return what this run was: command, time, configuration, versions."""
    record = {
        "command": command,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "versions": versions(),
        **(extra or {}),
    }
    log = logging.getLogger("censo_forecast.run")
    log.info("=== censo-forecast %s ===", command)
    for key, value in record["settings"].items():
        log.info("setting %s = %s", key, value)
    log.info("versions: %s", ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    for key, value in (extra or {}).items():
        log.info("%s: %s", key, value)
    return record
