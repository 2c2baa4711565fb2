"""The seed's entry point, kept for its users: `python run_experiment.py` = `censo-forecast run`.

Options are those of `censo-forecast run` (see `censo-forecast run --help`).
"""

import sys

from censo_forecast.cli import app

if __name__ == "__main__":
    sys.exit(app(["run", *sys.argv[1:]]))
