"""The command line reads its defaults and help from the settings, in one place."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from censo_forecast import __version__, config
from censo_forecast.cli import app

COMMAND = typer.main.get_command(app)
# option of the command line -> the setting it sets
OPTION_SETTING = {"--raw-dir": "raw_dir", "--out": "out_dir", "--cache-dir": "cache_dir", "--years": "years",
                  "--stages": "stages", "--device": "device", "--jobs": "jobs", "--engine": "engine", "--scheduler": "scheduler",
                  "--workers": "workers", "--offline": "offline", "--fresh": "fresh", "--base-url": "base_url",
                  "--listing-url": "listing_url", "--ca-bundle": "ca_bundle", "--insecure": "insecure", "--timeout": "timeout_s",
                  "--horizons": "horizons", "--lang": "report_lang", "--municipal-map": "municipal_map"}


def _options(name: str) -> dict:
    """The command's options by flag (typer's own click types: read by their attributes)."""
    command = COMMAND.commands[name]  # type: ignore[attr-defined]
    return {flag: p for p in command.params if p.param_type_name == "option" for flag in p.opts}


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"censo-forecast {__version__}"


@pytest.mark.parametrize("command", ["run", "download", "ingest", "predict"])
def test_options_take_help_and_default_from_the_settings(command):
    """Each setting's option says what the setting's field says, and leaves the value unset, so that
    a TOML file's value applies, then the field's default: one home per default."""
    options = _options(command)
    shared = [flag for flag in options if flag in OPTION_SETTING]
    assert shared
    for flag in shared:
        option, name = options[flag], OPTION_SETTING[flag]
        if command == "download" and flag == "--years":
            continue  # download's years add 'all': every year the server offers
        assert option.help == config.describe(name), flag
        assert option.default in (None, False), flag


def test_help_shows_the_settings_defaults():
    assert "(default: 5)" in config.describe("horizons") and "(default: 60.0)" in config.describe("timeout_s")
    field = next(f for f in dataclasses.fields(config.Settings) if f.name == "horizons")
    assert config.default("horizons") == field.default


def test_a_bad_value_gets_the_settings_message(tmp_path):
    result = CliRunner().invoke(app, ["run", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--horizons", "0", "--offline"])
    assert result.exit_code == 2 and "horizons must be between 1 and 10" in result.output
    result = CliRunner().invoke(app, ["run", "--raw-dir", str(tmp_path), "--stages", "IN_NOPE", "--offline"])
    assert result.exit_code == 2 and "unknown stage 'IN_NOPE'" in result.output
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path), "--max-schools", "-5"])
    assert result.exit_code == 2 and "--max-schools must be 0" in result.output
