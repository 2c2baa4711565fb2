"""Logging to the console and to the output folder's execution log, and what each run records."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from censo_forecast import outputs

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
    path = out_dir / outputs.LOG
    file_handler = _LogFile(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler._censo_forecast = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    for noisy in ("httpx", "httpcore", "matplotlib", "shap", "distributed", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


class _LogFile(logging.FileHandler):
    """The output folder's log; a line it cannot write (a full disk) is said once on the console,
    not as a traceback per line, and the run goes on to the error that names the file it could not write."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} ({sys.exc_info()[1]}); "
                             "the console keeps the log\n")


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


class Progress:
    """A tqdm bar on a terminal; elsewhere a log line at every tenth of the total.

    `byte_units` shows sizes in MB; `position` stacks bars of parallel transfers.
    """

    def __init__(self, label: str, total: int | None, *, unit: str = "", byte_units: bool = False,
                 position: int = 0, enabled: bool | None = None, leave: bool = True):
        self.label, self.total, self.unit, self.byte_units = label, total, unit, byte_units
        self.done = 0
        self.started = time.monotonic()
        self.next_log = 0.1
        self.bar = None
        if sys.stderr.isatty() if enabled is None else enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, position=position, leave=leave,
                            **(dict(unit="B", unit_scale=True, unit_divisor=1024) if byte_units else dict(unit=unit)))

    def reset(self, done: int) -> None:
        self.done = done
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total and self.done / self.total >= self.next_log:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate else float("inf")
            if self.byte_units:
                amount = f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s"
            else:
                amount = f"{self.done}/{self.total} {self.unit}"
            logging.getLogger("censo_forecast.progress").info(
                "%s: %3.0f%% %s, ETA %.0fs", self.label, 100 * self.done / self.total, amount, eta)
            self.next_log = int(self.done / self.total * 10 + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
