"""One typed settings object for every step, read from a TOML file and overridden by the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from censo_forecast import storage
from censo_forecast.inep import catalog

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


LOCAL_ENGINE = "local"
MAX_HORIZONS = 10  # years ahead; the census's 15 years leave few walk-forward origins beyond that
REPORT_LANGUAGES = ("pt-BR", "en")  # report.html: Brazilian Portuguese (the default) or English
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
    seed: int = 0

    def __post_init__(self) -> None:
        _check_fields(self, "model.")
        if self.train_window_years < 0:
            raise ValueError("train_window_years must be 0 (every earlier year) or a positive number of years")
        if self.max_training_rows < 0:
            raise ValueError("max_training_rows must be 0 (every row) or a positive number of rows")


@dataclass
class Settings:
    raw_dir: Path = Path("data/raw")
    cache_dir: Path | None = None  # default: <raw_dir>/../cache
    out_dir: Path = Path("outputs")
    years: list[int] | None = None  # None: every available year
    stages: list[str] = field(default_factory=lambda: [s.flag for s in catalog.STAGES])
    device: str = "auto"  # auto | cpu | cuda
    jobs: int = 2
    # engine: where the heavy steps run (local: this process; dask: a Dask cluster)
    engine: str = "local"
    scheduler: str | None = None  # tcp://host:port of a running scheduler; None: start a LocalCluster
    workers: int = 2  # LocalCluster workers (one thread each) when no scheduler is given
    offline: bool = False
    fresh: bool = False
    # download
    base_url: str = catalog.BASE_URL
    listing_url: str = catalog.LISTING_URL
    ca_bundle: Path | None = None
    insecure: bool = False
    retries: int = 8
    timeout_s: float = 60.0
    # forecast years after the last census year (T+1 .. T+horizons), each validated walk-forward
    horizons: int = 5
    # validation and explanation
    min_train_years: int = 3
    shap_sample: int = 2000  # held-out rows of the last test year explained per stage
    model: ModelSettings = field(default_factory=ModelSettings)
    # report.html: its language (pt-BR or en), the most schools its school table holds (above:
    # it points to the forecast files), and the optional municipal map (needs geobr and a network)
    report_lang: str = "pt-BR"
    report_max_schools: int = 10_000
    municipal_map: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.years, str):  # '2011-2021', as on the command line
            self.years = catalog.parse_years(self.years)
        if isinstance(self.stages, str):  # 'IN_MED,IN_FUND_AI'
            self.stages = catalog.parse_stages(self.stages)
        _check_fields(self)
        if not self.stages:
            raise ValueError("setting stages: no stage given; name one or more offer flags (IN_MED,IN_FUND_AI) or leave it out for all ten")
        self.raw_dir = storage.normalize(self.raw_dir)  # a path, or an fsspec URL for cluster storage
        self.out_dir = Path(self.out_dir)
        if self.cache_dir is not None:
            self.cache_dir = storage.normalize(self.cache_dir)
        if self.ca_bundle is not None:
            self.ca_bundle = Path(self.ca_bundle)
        if isinstance(self.model, dict):
            unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(ModelSettings)})
            if unknown:
                raise ValueError(f"unknown [model] setting(s) {unknown}; known: {sorted(f.name for f in dataclasses.fields(ModelSettings))}")
            self.model = ModelSettings(**self.model)
        if not isinstance(self.model, ModelSettings):
            raise ValueError(f"setting model: expected a [model] table, got {self.model!r} ({type(self.model).__name__})")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        for flag in self.stages:
            catalog.stage(flag)
        if self.jobs < 1:
            raise ValueError("jobs must be at least 1")
        if not 1 <= self.horizons <= MAX_HORIZONS:
            raise ValueError(f"horizons must be between 1 and {MAX_HORIZONS} years ahead, not {self.horizons}")
        if not engine_exists(self.engine):
            raise ValueError(f"engine must be local or a module of censo_forecast.distributed (dask), not {self.engine!r}")
        if self.scheduler and self.engine == LOCAL_ENGINE:
            raise ValueError("--scheduler needs a cluster engine (--engine dask)")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.report_lang not in REPORT_LANGUAGES:
            raise ValueError(f"report_lang must be one of {', '.join(REPORT_LANGUAGES)}, not {self.report_lang!r}")
        if self.report_max_schools < 0:
            raise ValueError("report_max_schools must be 0 (no school table) or a positive number of schools")

    @property
    def cache(self):
        if self.cache_dir is not None:
            return self.cache_dir
        if isinstance(self.raw_dir, Path):
            return self.raw_dir.parent / "cache"
        return self.raw_dir.rsplit("/", 1)[0] + "/cache"

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def load_settings(path: Path | None = None, **overrides) -> Settings:
    """Defaults, then the TOML file (if given), then explicit overrides that are not None."""
    values: dict = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"configuration file {path} not found") from None
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
