"""One typed settings object for every step, read from a TOML file and overridden by the CLI.

Every default lives here: the CLI reads its defaults and help from these fields
(`describe`), and `EnrollmentForecaster` checks its parameters with the same rules
(`check_*`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from censo_forecast import machine, storage
from censo_forecast.inep import catalog

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


LOCAL_ENGINE = "local"
MAX_HORIZONS = 10  # years ahead; the census's 15 years leave few walk-forward origins beyond that
REPORT_LANGUAGES = ("pt-BR", "en")  # report.html: Brazilian Portuguese (the default) or English
DEVICES = ("auto", "cpu", "cuda")
_EXPECTED = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text", "Path": "a path",
             "list[int]": "a list of years", "list[str]": "a list of texts"}


def _typed(key: str, value, hint: str):
    """`value` as the annotation `hint` wants it, or a ValueError naming the key, the expected
    type and the value (TOML and Python callers get the same message)."""
    options = [h.strip() for h in hint.split("|")]
    if value is None and "None" in options:
        return None
    kind = options[0]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "Path": isinstance(value, (str, Path)),
        "list[int]": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }.get(kind, True)
    if not ok:
        raise ValueError(f"setting {key}: expected {_EXPECTED[kind]}, got {value!r} ({type(value).__name__})")
    return float(value) if kind == "float" else value


def _check_fields(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, _typed(prefix + f.name, getattr(obj, f.name), str(f.type)))


def engine_exists(name: str) -> bool:
    """An engine is `local` or a module `censo_forecast/distributed/<name>.py` (see `engine`)."""
    if name == LOCAL_ENGINE:
        return True
    if not isinstance(name, str) or not name.isidentifier():
        return False
    return importlib.util.find_spec(f"censo_forecast.distributed.{name}") is not None


@dataclass
class ModelSettings:
    """Gradient-boosting hyper-parameters shared by LightGBM and XGBoost, and the training
    window; the `[model]` table of the TOML settings.

    `n_estimators`, `learning_rate`, `max_bin`, `subsample`, `colsample` and `seed` go to
    both libraries; `num_leaves` and `min_child_samples` to LightGBM; `max_depth` to XGBoost.
    """

    n_estimators: int = 150
    learning_rate: float = 0.1
    num_leaves: int = 31
    max_depth: int = 6
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample: float = 0.8
    max_bin: int = 255  # histogram bins per feature (both libraries)
    # training window: the last N target years before the test year (0: every earlier year).
    # Nationally, 4-6 years matched the expanding window's error at a third to a half of its
    # training time (benchmarks/README.md); 5 keeps the national run under 30 minutes.
    train_window_years: int = 5
    # rows one fit may see: the (origin, horizon) pairs of the window are sampled down to this
    # many, evenly over horizons and years (0: every pair). Five horizons give five pairs per
    # school and target year; the cap keeps a national fit near the one-horizon cost
    # (benchmarks/README.md, "horizons").
    max_training_rows: int = 200_000
    # the years ahead 1 .. N that get a model of their own, trained on that horizon's pairs
    # only; later horizons use the shared model (0: the shared model everywhere). On the real
    # census one year ahead a model of its own beat the shared one on every major stage
    # (final elementary +3.1 -> +7.1 % over persistence), from two years ahead it did not
    # (benchmarks/README.md, "the hybrid"). Each costs one more fit per origin, on its share of
    # max_training_rows (the pairs of its horizon the shared model sees too).
    separate_horizons: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_fields(self, "model.")
        ranges = {  # what both libraries accept, said before any work rather than as their traceback
            "n_estimators": (self.n_estimators >= 1, "at least 1"),
            "learning_rate": (self.learning_rate > 0, "above 0"),
            "num_leaves": (self.num_leaves >= 2, "at least 2"),
            "max_depth": (self.max_depth >= 1, "at least 1"),
            "min_child_samples": (self.min_child_samples >= 1, "at least 1"),
            "subsample": (0 < self.subsample <= 1, "above 0 and at most 1"),
            "colsample": (0 < self.colsample <= 1, "above 0 and at most 1"),
            "max_bin": (self.max_bin >= 2, "at least 2"),
            "train_window_years": (self.train_window_years >= 0, "0 (every earlier year) or a positive number of years"),
            "max_training_rows": (self.max_training_rows >= 0, "0 (every row) or a positive number of rows"),
            "separate_horizons": (self.separate_horizons >= 0, "0 (one shared model) or a number of years ahead"),
            "seed": (self.seed >= 0, "0 or more"),
        }
        for name, (ok, rule) in ranges.items():
            if not ok:
                raise ValueError(f"setting model.{name} must be {rule}, not {getattr(self, name)!r}")

    # scikit-learn's nested parameters (EnrollmentForecaster(model=...).set_params(model__learning_rate=...))
    def get_params(self, deep: bool = True) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> ModelSettings:
        """A checked copy with some settings changed (the original is never mutated)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown [model] setting(s) {unknown}; known: {sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def __sklearn_clone__(self) -> ModelSettings:
        return dataclasses.replace(self)


def check_stages(stages) -> list[str]:
    """Known offer flags, at least one."""
    if not stages:
        raise ValueError("setting stages: no stage given; name one or more offer flags (IN_MED,IN_FUND_AI) or leave it out for all ten")
    for flag in stages:
        catalog.stage(flag)
    return list(stages)


def check_horizons(horizons) -> int:
    if isinstance(horizons, bool) or not isinstance(horizons, int) or not 1 <= horizons <= MAX_HORIZONS:
        raise ValueError(f"horizons must be between 1 and {MAX_HORIZONS} years ahead, not {horizons!r}")
    return horizons


def check_device(device) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, not {device!r}")
    return device


def check_min_train_years(years) -> int:
    if isinstance(years, bool) or not isinstance(years, int) or years < 1:
        raise ValueError(f"min_train_years must be at least 1 census year, not {years!r}")
    return years


def _setting(default=dataclasses.MISSING, help: str = "", **kwargs):
    """A settings field with its help text: the CLI's `--option` reads both (`describe`)."""
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class Settings:
    raw_dir: Path = _setting(Path("data/raw"), "Folder (or fsspec URL) with microdados_censo_escolar_YYYY.zip.")
    cache_dir: Path | None = _setting(None, "Parquet cache, folder or fsspec URL (default: beside the raw folder).")
    out_dir: Path = _setting(Path("outputs"), "Output folder.")
    years: list[int] | None = _setting(None, "Years: '2011-2021', '2015,2017' or 'all' (default: every available year).")
    stages: list[str] = _setting(help="Offer flags, comma-separated (IN_MED,IN_FUND_AI); default all ten.",
                                 default_factory=lambda: [s.flag for s in catalog.STAGES])
    device: str = _setting("auto", "auto | cpu | cuda: where the boosters train.")
    jobs: int = _setting(2, "Years ingested and downloaded in parallel, and threads for model fits, side by side (-1: every CPU).")
    # engine: where the heavy steps run (local: this process; dask: a Dask cluster)
    engine: str = _setting("local", "local | dask: ingest, features and training on a Dask cluster.")
    scheduler: str | None = _setting(None, "Dask scheduler address (tcp://host:8786); default: start a LocalCluster.")
    workers: int = _setting(2, "LocalCluster workers (one thread each) when no --scheduler is given.")
    offline: bool = _setting(False, "Use only the zips already in --raw-dir.")
    fresh: bool = _setting(False, "Ignore checkpoints of an earlier run and start over.")
    # download
    base_url: str = _setting(catalog.BASE_URL, "Where the zips live (a mirror; http:// is fine on this machine).")
    listing_url: str = _setting(catalog.LISTING_URL, "Page listing the zips; 'none' to skip discovery.")
    ca_bundle: Path | None = _setting(None, "Extra CA certificates (PEM) to trust.")
    insecure: bool = _setting(False, "Turn TLS verification OFF (never the default; warns every time).")
    retries: int = _setting(8, "Consecutive failures without progress before a download gives up.")
    timeout_s: float = _setting(60.0, "Seconds to wait for a server per request; a file gives up after 3 such waits without a byte.")
    horizons: int = _setting(5, f"Forecast years after the last census year, each validated walk-forward (at most {MAX_HORIZONS}).")
    # validation and explanation
    min_train_years: int = _setting(3, "Census years before the first walk-forward test year.")
    demography: Path | None = _setting(None, "Folder of births and population per municipality (CSV or Parquet, "
                                       "the README's format); default: without them.")
    demography_url: str = _setting("ftp://ftp.datasus.gov.br", "DATASUS's FTP server (or a mirror) for `demography download`.")
    plain_ftp: bool = _setting(False, "Allow plain FTP when the server offers no TLS (DATASUS's does not; files are checked by decoding).")
    shap_sample: int = _setting(2000, "Held-out rows of the last origin explained with SHAP per stage.")
    model: ModelSettings = _setting(help="Boosting hyper-parameters and training window ([model] table).",
                                    default_factory=ModelSettings)
    # report.html: its language (pt-BR or en), the most schools its school table holds (above:
    # it points to the forecast files), and the optional municipal map (needs geobr and a network)
    report_lang: str = _setting("pt-BR", "Language of report.html: pt-BR or en.")
    report_max_schools: int = _setting(10_000, "Most schools the report's school table holds (0: none; above: it points to the files).")
    municipal_map: bool = _setting(False, "Add a municipal map to the report (needs geobr installed and a network).")

    def __post_init__(self) -> None:
        if isinstance(self.years, str):  # '2011-2021', as on the command line
            self.years = catalog.parse_years(self.years)
        if isinstance(self.stages, str):  # 'IN_MED,IN_FUND_AI'
            self.stages = catalog.parse_stages(self.stages)
        _check_fields(self)
        check_stages(self.stages)
        self.raw_dir = storage.normalize(self.raw_dir)  # a path, or an fsspec URL for cluster storage
        self.out_dir = Path(self.out_dir).expanduser()
        storage.check_location(self.raw_dir, "--raw-dir")
        if self.cache_dir is not None:
            self.cache_dir = storage.normalize(self.cache_dir)
            storage.check_location(self.cache_dir, "--cache-dir")
        raw, cache = storage.local_path(self.raw_dir), storage.local_path(self.cache)
        if raw is not None and cache is not None and raw.resolve() == cache.resolve():
            raise ValueError(f"--cache-dir {cache} is the raw folder: each keeps its own manifest.json, so they must differ "
                             "(default: a folder 'cache' beside the raw one)")
        if self.ca_bundle is not None:
            self.ca_bundle = Path(self.ca_bundle).expanduser()
        if self.demography is not None:
            self.demography = Path(self.demography).expanduser()
        if isinstance(self.model, dict):
            unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(ModelSettings)})
            if unknown:
                raise ValueError(
                    f"unknown [model] setting(s) {unknown}; known: {sorted(f.name for f in dataclasses.fields(ModelSettings))}"
                )
            self.model = ModelSettings(**self.model)
        if not isinstance(self.model, ModelSettings):
            raise ValueError(f"setting model: expected a [model] table, got {self.model!r} ({type(self.model).__name__})")
        check_device(self.device)
        machine.effective_jobs(self.jobs)
        check_horizons(self.horizons)
        check_min_train_years(self.min_train_years)
        if self.shap_sample < 1:
            raise ValueError(f"shap_sample must be at least 1 row, not {self.shap_sample}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be above 0 seconds, not {self.timeout_s}")
        if not engine_exists(self.engine):
            raise ValueError(f"engine must be local or a module of censo_forecast.distributed (dask), not {self.engine!r}")
        if self.scheduler and self.engine == LOCAL_ENGINE:
            raise ValueError("--scheduler needs a cluster engine (--engine dask)")
        if self.scheduler and not re.fullmatch(r"(tcp|tls|ucx|ws|wss)://[^\s:/]+(:\d{1,5})?|[^\s:/]+:\d{1,5}", self.scheduler):
            raise ValueError(f"--scheduler {self.scheduler!r}: expected tcp://host:port (a running Dask scheduler)")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.report_lang not in REPORT_LANGUAGES:
            raise ValueError(f"report_lang must be one of {', '.join(REPORT_LANGUAGES)}, not {self.report_lang!r}")
        if self.report_max_schools < 0:
            raise ValueError("report_max_schools must be 0 (no school table) or a positive number of schools")

    @property
    def threads(self) -> int:
        """`jobs` as a positive count (-1: every available CPU)."""
        return machine.effective_jobs(self.jobs)

    @property
    def demography_folder(self) -> Path:
        """Where `demography download` writes births and population (`run` reads them with --demography):
        --demography, else a folder `demografia` beside the census cache."""
        if self.demography is not None:  # expanded when the settings were made
            return self.demography
        cache = storage.local_path(self.cache)
        if cache is None:
            raise ValueError(f"the census cache {self.cache} is not a local folder; pass --out for the demographic files")
        return Path(cache).parent / "demografia"

    @property
    def cache(self):
        if self.cache_dir is not None:
            return self.cache_dir
        if isinstance(self.raw_dir, Path):
            return self.raw_dir.parent / "cache"
        return self.raw_dir.rsplit("/", 1)[0] + "/cache"

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(Settings) if f.name == name)


def default(name: str):
    """A setting's default value (the CLI's, the forecaster's and the report's)."""
    f = _field(name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if callable(f.default_factory) else None


def describe(name: str) -> str:
    """A setting's help text with its default, for the CLI."""
    value = default(name)
    shown = "" if value is None or isinstance(value, (bool, list, ModelSettings)) else f" (default: {value})"
    return _field(name).metadata["help"] + shown


def load_settings(path: Path | None = None, **overrides) -> Settings:
    """Defaults, then the TOML file (if given), then explicit overrides that are not None."""
    values: dict = {}
    if path is not None:
        try:  # utf-8-sig: a file saved with a byte-order mark (Windows Notepad) reads as without one
            values = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ValueError(f"configuration file {path} not found") from None
        except IsADirectoryError:
            raise ValueError(f"--config {path} is a folder; give the TOML file's path") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"configuration file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"configuration file {path}: {exc}") from None
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"configuration file {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValueError as exc:
        raise ValueError(f"configuration file {path}: {exc}" if path is not None else str(exc)) from None
