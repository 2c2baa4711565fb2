"""A synthetic School Census in INEP's exact file format, with dynamics worth forecasting.

It is the offline default for the demo, the tests and the benchmarks, so it reproduces
the real files' layout (per-year folders, headers, encoding, blanks versus zeros, date
formats, garbled member names) and a plausible school life: municipalities with their own
demographic trend, cohorts moving creche -> pre-school -> early -> final elementary ->
high school, schools opening and closing, stages added and dropped, occasional shocks,
and national totals tracking INEP's published ones at full scale (~180k active schools).

Beside the zips, `demografia/` holds its municipalities' births and population by age in
the documented format (`demography.synthetic`), following the same demographic factor.

`placebo=True` replaces the dynamics by independent year-over-year changes whose median,
closed offers counted, is no change (`PLACEBO_LOG_CHANGE`), so that no model can beat
persistence per school: the pipeline's leakage check.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl

from censo_forecast import atomic
from censo_forecast.demography import synthetic as demography
from censo_forecast.inep import catalog
from censo_forecast.inep.catalog import SCHOOL, YEAR
from censo_forecast.outputs import STAGE

log = logging.getLogger(__name__)

FULL_SCALE_ACTIVE_SCHOOLS = 180_000

# Published national enrollment per stage (millions), approximately, used as the trajectory
# the synthetic census follows at full scale. Order follows SIMULATED below.
_YEARS = list(range(2011, 2025))
_NATIONAL_MILLIONS = {
    "INF_CRE": [2.30, 2.54, 2.73, 2.89, 3.05, 3.23, 3.41, 3.59, 3.76, 3.65, 3.42, 3.90, 4.10, 4.18],
    "INF_PRE": [4.68, 4.75, 4.86, 4.96, 4.92, 5.04, 5.10, 5.16, 5.22, 5.18, 4.90, 5.00, 5.30, 5.30],
    "FUND_AI": [16.36, 16.02, 15.76, 15.70, 15.56, 15.44, 15.33, 15.18, 15.02, 14.79, 14.53, 14.55, 14.40, 14.30],
    "FUND_AF": [13.66, 13.68, 13.30, 12.76, 12.37, 12.25, 12.02, 12.01, 11.91, 11.93, 11.98, 11.80, 11.60, 11.50],
    "MED": [8.40, 8.38, 8.31, 8.30, 8.08, 8.13, 7.93, 7.71, 7.47, 7.55, 7.77, 7.80, 7.60, 7.50],
    "PROF_TEC": [1.25, 1.36, 1.44, 1.55, 1.60, 1.56, 1.58, 1.62, 1.66, 1.70, 1.72, 1.76, 1.80, 1.85],
    "EJA_FUND": [2.68, 2.56, 2.45, 2.21, 2.18, 2.19, 2.17, 2.11, 1.94, 1.75, 1.68, 1.69, 1.57, 1.50],
    "EJA_MED": [1.36, 1.35, 1.32, 1.27, 1.31, 1.30, 1.36, 1.44, 1.33, 1.25, 1.26, 1.08, 1.02, 0.95],
    "ESP_CE": [0.19, 0.20, 0.19, 0.19, 0.18, 0.17, 0.17, 0.17, 0.17, 0.16, 0.16, 0.16, 0.17, 0.17],
}


@dataclass(frozen=True)
class _StageModel:
    suffix: str
    grades: int
    survival: float  # share of a grade that moves to the next grade in the same school
    class_size: float
    teachers_per_class: float
    offer_prob: tuple[float, float, float, float]  # by TP_DEPENDENCIA 1..4
    feeder: str | None = None
    feeder_share: float = 0.0


# Stages simulated directly; IN_FUND is the union of early and final elementary.
SIMULATED = (
    _StageModel("INF_CRE", 4, 0.88, 14, 1.6, (0.00, 0.02, 0.45, 0.55)),
    _StageModel("INF_PRE", 2, 0.92, 19, 1.2, (0.00, 0.05, 0.65, 0.65), "INF_CRE", 0.70),
    _StageModel("FUND_AI", 5, 0.96, 23, 1.3, (0.05, 0.35, 0.70, 0.55), "INF_PRE", 0.75),
    _StageModel("FUND_AF", 4, 0.93, 28, 2.6, (0.10, 0.70, 0.30, 0.40), "FUND_AI", 0.60),
    _StageModel("MED", 3, 0.88, 31, 3.2, (0.90, 0.60, 0.02, 0.25), "FUND_AF", 0.50),
    _StageModel("PROF_TEC", 3, 0.80, 30, 4.0, (0.85, 0.12, 0.00, 0.08), "FUND_AF", 0.08),
    _StageModel("EJA_FUND", 2, 0.60, 22, 2.0, (0.02, 0.15, 0.20, 0.02)),
    _StageModel("EJA_MED", 2, 0.60, 27, 2.2, (0.05, 0.25, 0.01, 0.02), "EJA_FUND", 0.30),
    _StageModel("ESP_CE", 4, 0.85, 8, 1.5, (0.00, 0.02, 0.01, 0.03)),
)
_BASIC = ("INF_CRE", "INF_PRE", "FUND", "MED", "PROF_TEC", "EJA_FUND", "EJA_MED", "ESP_CE")  # adding up to QT_*_BAS
_DEPENDENCY_MIX = (0.004, 0.16, 0.60, 0.236)
_UF_WEIGHTS = {  # share of schools by state, roughly as in the real census
    11: 1.1, 12: 0.9, 13: 3.0, 14: 0.5, 15: 5.5, 16: 0.4, 17: 0.8, 21: 6.0, 22: 2.6, 23: 3.9,
    24: 1.6, 25: 2.4, 26: 3.8, 27: 1.5, 28: 1.0, 29: 8.4, 31: 8.6, 32: 1.6, 33: 5.2, 35: 16.0,
    41: 5.0, 42: 3.2, 43: 5.2, 50: 1.0, 51: 1.3, 52: 2.4, 53: 0.7,
}
_NAME_WORDS = (
    "JOÃO", "MARIA", "CONCEIÇÃO", "SÃO JOSÉ", "ANÍSIO TEIXEIRA", "PAULO FREIRE", "CECÍLIA MEIRELES",
    "MONTEIRO LOBATO", "TIRADENTES", "SANTA LUZIA", "NOSSA SENHORA APARECIDA", "DOM PEDRO II",
    "RUI BARBOSA", "CASTRO ALVES", "MACHADO DE ASSIS", "VILA NOVA", "BOA ESPERANÇA", "IPÊ AMARELO",
)
_MUNI_WORDS = ("São", "Santa", "Boa", "Nova", "Vila", "Porto", "Campo", "Serra", "Rio", "Lagoa")
_MUNI_TAILS = ("Conceição", "Esperança", "Vista", "Alegre", "Grande", "do Sul", "Verde", "Bonita", "Fé", "Jardim")
_NAME_PREFIX = {1: "INSTITUTO FEDERAL", 2: "EE", 3: "EM", 4: "COLEGIO"}
# The placebo's yearly change of a school's enrollment, log scale (mean, sd). Each year about
# 2 % of offers close or are dropped (0 pupils), so the mean is set a little above 0 that the
# median offer, closed ones counted, neither grows nor shrinks one to five years ahead (the
# MAE-best multiple of persistence is 1 within 2 %): persistence is then the best forecast in
# absolute error, and a learner beating it means leakage. With a mean of -0.01 the median fell
# 10 % in five years, a shift common to all schools that the learners, pooling several years,
# estimated more closely than Deriva's one year compounded (benchmarks/README.md, "accuracy.py").
PLACEBO_LOG_CHANGE = (0.009, 0.15)
# INEP's situation codes
_ACTIVE, _PARALYSED, _EXTINCT_NOW, _EXTINCT_BEFORE, _GONE = 1, 2, 3, 4, 0


@dataclass
class SynthSettings:
    years: list[int]
    schools: int = 2000
    seed: int = 0
    placebo: bool = False
    # years from this one on are written in the multi-table layout (INEP's from 2025; an
    # earlier year stands for an older year re-published that way)
    tables_from: int = catalog.SINGLE_TABLE_LAST_YEAR + 1
    first_release: bool = False  # multi-table years as INEP's first 2025 release, not its re-publication


class CensusSimulator:
    """Evolves a population of schools year by year and renders each year as INEP's CSV."""

    # one entry per school ever opened, grown together by `_alloc` (per-stage arrays too:
    # grades_<stage>, offers_<stage>, entry_<stage>, read by name)
    code: np.ndarray
    muni: np.ndarray
    dep: np.ndarray
    loc: np.ndarray
    status: np.ndarray
    closed_for: np.ndarray
    key: np.ndarray
    first_year: np.ndarray
    size: np.ndarray
    attract: np.ndarray
    class_factor: np.ndarray
    teacher_factor: np.ndarray
    offers_FUND_AI: np.ndarray  # the stage every school without another offers

    def __init__(self, settings: SynthSettings):
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)
        self._build_municipalities()
        self.n = 0
        self._alloc(int(settings.schools * 1.4) + 16)
        self._open_schools(settings.schools, first=True)

    # ----------------------------------------------------------------- population
    def _build_municipalities(self) -> None:
        rng = self.rng
        n_muni = max(3, round(self.s.schools / 32))
        ufs = np.array(list(_UF_WEIGHTS))
        weights = np.array(list(_UF_WEIGHTS.values()), dtype=float)
        muni_uf = np.sort(rng.choice(ufs, size=n_muni, p=weights / weights.sum()))
        serial = np.zeros(n_muni, dtype=np.int64)
        for uf in np.unique(muni_uf):
            idx = np.flatnonzero(muni_uf == uf)
            serial[idx] = np.arange(len(idx)) * 7 + 10
        check = (serial * 3 + muni_uf) % 10
        self.muni_uf = muni_uf
        self.muni_code = muni_uf * 100_000 + serial * 10 + check
        self.muni_name = [
            f"{_MUNI_WORDS[i % 10]} {_MUNI_TAILS[(i // 10) % 10]}{'' if i < 100 else ' ' + str(i // 100)}"
            for i in range(n_muni)
        ]
        # Demographic trend: mostly slow decline, some growth; sizes are heavy-tailed.
        self.muni_growth = np.clip(rng.normal(-0.012, 0.02, n_muni), -0.06, 0.06)
        self.muni_factor = np.ones(n_muni)
        self.muni_weight = rng.lognormal(0.0, 1.0, n_muni)
        self.uf_serial: dict[int, int] = {}

    def _alloc(self, cap: int) -> None:
        def grow(old, shape_tail=(), dtype=np.int64, fill=0):
            new = np.full((cap, *shape_tail), fill, dtype=dtype)
            if old is not None:
                new[: len(old)] = old
            return new

        g = lambda name, *a, **k: setattr(self, name, grow(getattr(self, name, None), *a, **k))  # noqa: E731
        g("code")
        g("muni")
        g("dep")
        g("loc")
        g("status")
        g("closed_for")
        g("key", dtype=np.uint64)
        g("first_year")
        g("size", dtype=float, fill=1.0)
        g("attract", dtype=float, fill=1.0)
        g("class_factor", dtype=float, fill=1.0)
        g("teacher_factor", dtype=float, fill=1.0)
        for st in SIMULATED:
            g(f"grades_{st.suffix}", (st.grades,))
            g(f"offers_{st.suffix}", dtype=bool, fill=False)
            g(f"entry_{st.suffix}", dtype=float, fill=0.0)
        names = getattr(self, "names", [])
        self.names = names + [""] * (cap - len(names))
        self.cap = cap

    def _open_schools(self, count: int, first: bool = False, year: int | None = None) -> np.ndarray:
        rng = self.rng
        if self.n + count > self.cap:
            self._alloc(max(self.cap * 2, self.n + count + 16))
        idx = np.arange(self.n, self.n + count)
        self.n += count
        muni = rng.choice(len(self.muni_code), size=count, p=self.muni_weight / self.muni_weight.sum())
        self.muni[idx] = muni
        dep_p = np.array(_DEPENDENCY_MIX)
        if not first:  # new schools are more often private or municipal
            dep_p = np.array((0.004, 0.06, 0.50, 0.436))
        self.dep[idx] = rng.choice([1, 2, 3, 4], size=count, p=dep_p / dep_p.sum())
        rural_p = np.where(self.dep[idx] == 3, 0.5, np.where(self.dep[idx] == 4, 0.03, 0.15))
        self.loc[idx] = np.where(rng.random(count) < rural_p, 2, 1)
        self.status[idx] = _ACTIVE
        self.key[idx] = rng.integers(0, 2**63, size=count, dtype=np.uint64)
        self.first_year[idx] = year if year is not None else self.s.years[0]
        rural = self.loc[idx] == 2
        self.size[idx] = rng.lognormal(0.0, 0.7, count) * np.where(rural, 0.35, 1.0) * (0.3 if not first else 1.0)
        self.attract[idx] = 1.0
        self.class_factor[idx] = rng.lognormal(0.0, 0.15, count) * np.where(rural, 0.7, 1.0)
        self.teacher_factor[idx] = rng.lognormal(0.0, 0.15, count)
        for uf_code in np.unique(self.muni_uf[muni]):
            sel = idx[self.muni_uf[muni] == uf_code]
            start = self.uf_serial.get(int(uf_code), 0)
            self.code[sel] = uf_code * 1_000_000 + 10_000 + start + np.arange(len(sel))
            self.uf_serial[int(uf_code)] = start + len(sel)
        for i in idx:
            word = _NAME_WORDS[int(self.key[i] % len(_NAME_WORDS))]
            self.names[i] = f"{_NAME_PREFIX[int(self.dep[i])]} {word} {int(self.code[i]) % 1000}"
        any_stage = np.zeros(count, dtype=bool)
        for st in SIMULATED:
            p = np.array(st.offer_prob)[self.dep[idx] - 1]
            if st.suffix in ("FUND_AF", "MED", "PROF_TEC"):
                p = p * np.where(rural, 0.5, 1.0)
            offers = rng.random(count) < p
            getattr(self, f"offers_{st.suffix}")[idx] = offers
            any_stage |= offers
        self.offers_FUND_AI[idx[~any_stage]] = True
        for st in SIMULATED:
            offers = getattr(self, f"offers_{st.suffix}")[idx]
            entry = self.size[idx] * rng.lognormal(0.0, 0.3, count) * offers
            getattr(self, f"entry_{st.suffix}")[idx] = entry
            grades = getattr(self, f"grades_{st.suffix}")
            grades[idx] = 0
        return idx

    # ----------------------------------------------------------------- dynamics
    def _target(self, suffix: str, year: int) -> float:
        """Expected national total for this stage and year, scaled to the simulated population."""
        series = _NATIONAL_MILLIONS[suffix]
        pos = min(max(year - _YEARS[0], 0), len(series) - 1)
        active = np.count_nonzero(self.status[: self.n] == _ACTIVE)
        return series[pos] * 1e6 * active / FULL_SCALE_ACTIVE_SCHOOLS

    def initialise(self, year: int) -> None:
        """Fill every grade so that the first year's totals match the national trajectory."""
        rng = self.rng
        for st in SIMULATED:
            entry = getattr(self, f"entry_{st.suffix}")[: self.n]
            total = entry.sum()
            if total <= 0:
                continue
            per_grade = self._target(st.suffix, year) / st.grades
            lam = entry / total * per_grade
            getattr(self, f"grades_{st.suffix}")[: self.n] = rng.poisson(lam[:, None] * np.ones(st.grades))
            getattr(self, f"entry_{st.suffix}")[: self.n] = lam

    def step(self, year: int) -> None:
        """Advance every school from year-1 to year."""
        rng = self.rng
        n = self.n
        self._age_closed()
        active = self.status[:n] == _ACTIVE
        # Closures: small and rural schools close more often.
        total_now = sum(getattr(self, f"grades_{st.suffix}")[:n].sum(axis=1) for st in SIMULATED)
        if self.s.placebo:
            p_close = np.full(n, 0.012)
        else:
            p_close = 0.004 + 0.05 * (total_now < 30) + 0.01 * (self.loc[:n] == 2)
        closing = active & (rng.random(n) < p_close)
        self.status[:n][closing] = np.where(rng.random(closing.sum()) < 0.4, _PARALYSED, _EXTINCT_NOW)
        for st in SIMULATED:
            getattr(self, f"offers_{st.suffix}")[:n][closing] = False
            getattr(self, f"grades_{st.suffix}")[:n][closing] = 0
        # Openings, in the same municipalities, small at first.
        n_new = rng.poisson(0.0135 * active.sum())
        new_idx = self._open_schools(int(n_new), year=year) if n_new else np.array([], dtype=int)
        n = self.n
        active = self.status[:n] == _ACTIVE
        if self.s.placebo:
            self._step_placebo(year, active, new_idx)
        else:
            self._step_dynamics(year, active, new_idx)

    def _age_closed(self) -> None:
        n = self.n
        st = self.status[:n]
        self.closed_for[:n] = np.where(st != _ACTIVE, self.closed_for[:n] + 1, 0)
        paralysed_on = (st == _PARALYSED) & (self.closed_for[:n] >= 2)
        st[paralysed_on] = _EXTINCT_BEFORE
        st[st == _EXTINCT_NOW] = _EXTINCT_BEFORE
        st[(st == _EXTINCT_BEFORE) & (self.closed_for[:n] >= 3)] = _GONE

    def _step_dynamics(self, year: int, active: np.ndarray, new_idx: np.ndarray) -> None:
        rng = self.rng
        n = self.n
        self.muni_factor *= 1.0 + self.muni_growth + rng.normal(0.0, 0.01, len(self.muni_factor))
        # School attractiveness is a random walk: a trend that lagged features can pick up.
        self.attract[:n] *= np.exp(rng.normal(0.0, 0.05, n))
        shock = np.where(rng.random(n) < 0.006, rng.uniform(0.4, 1.6, n), 1.0)
        previous = {st.suffix: getattr(self, f"grades_{st.suffix}")[:n].copy() for st in SIMULATED}
        for st in SIMULATED:
            offers = getattr(self, f"offers_{st.suffix}")[:n]
            grades = getattr(self, f"grades_{st.suffix}")[:n]
            entry = getattr(self, f"entry_{st.suffix}")[:n]
            # Stages dropped (more often when tiny) and added (compatible with the school's type).
            size_now = previous[st.suffix].sum(axis=1)
            drop = active & offers & (rng.random(n) < 0.006 + 0.08 * (size_now < 8))
            add_p = np.array(st.offer_prob)[self.dep[:n] - 1] * 0.015
            add = active & ~offers & (rng.random(n) < add_p)
            offers[drop] = False
            offers[add] = True
            entry[add] = self.size[:n][add] * 0.4 * rng.lognormal(0.0, 0.3, add.sum())
            progressed = np.zeros_like(grades)
            progressed[:, 1:] = rng.binomial(previous[st.suffix][:, :-1], st.survival)
            muni = self.muni_factor[self.muni[:n]]
            lam = entry * muni * self.attract[:n]
            if st.feeder:
                lam = lam + st.feeder_share * previous[st.feeder][:, -1] * getattr(self, f"offers_{st.feeder}")[:n]
            lam = lam * shock * offers
            progressed = progressed * (offers * active)[:, None]
            k = self._calibration(st.suffix, year, progressed.sum(), lam.sum())
            grades[:, 0] = rng.poisson(lam * k)
            grades[:, 1:] = progressed[:, 1:]

    def _calibration(self, suffix: str, year: int, progressed: float, entrants: float) -> float:
        if entrants <= 0:
            return 1.0
        return float(np.clip((self._target(suffix, year) - progressed) / entrants, 0.2, 3.0))

    def _step_placebo(self, year: int, active: np.ndarray, new_idx: np.ndarray) -> None:
        """Each school's change is independent of its past: only a common drift is learnable."""
        rng = self.rng
        n = self.n
        for st in SIMULATED:
            offers = getattr(self, f"offers_{st.suffix}")[:n]
            grades = getattr(self, f"grades_{st.suffix}")[:n]
            drop = active & offers & (rng.random(n) < 0.01)
            add = active & ~offers & (rng.random(n) < 0.004)
            offers[drop] = False
            offers[add] = True
            before = grades.sum(axis=1).astype(float)
            before[add] = rng.integers(5, 40, add.sum())
            if len(new_idx):
                before[new_idx] = rng.integers(5, 40, len(new_idx)) * offers[new_idx]
            after = np.rint(before * np.exp(rng.normal(*PLACEBO_LOG_CHANGE, n))) * (offers & active)
            split = rng.multinomial(1, np.ones(st.grades) / st.grades, size=n)  # one grade index per school
            base, rest = np.divmod(after.astype(np.int64), st.grades)
            grades[:] = base[:, None] + split * rest[:, None]

    # ----------------------------------------------------------------- rendering
    def stage_counts(self, idx: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """QT_MAT/QT_DOC/QT_TUR/IN per catalog stage for the given rows."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for st in SIMULATED:
            grades = getattr(self, f"grades_{st.suffix}")[idx]
            mat = grades.sum(axis=1)
            offers = getattr(self, f"offers_{st.suffix}")[idx]
            classes = np.where(mat > 0, np.ceil(mat / (st.class_size * self.class_factor[idx])), 0).astype(np.int64)
            jitter = ((self.key[idx] >> np.uint64(7)) % np.uint64(3)).astype(np.int64) - 1
            teachers = np.where(mat > 0, np.maximum(1, np.rint(classes * st.teachers_per_class * self.teacher_factor[idx]) + jitter), 0)
            out[st.suffix] = {
                "IN": (offers & (mat > 0)).astype(np.int64),
                "MAT": mat,
                "DOC": teachers.astype(np.int64),
                "TUR": classes,
                "grades": grades,
            }
        ai, af = out["FUND_AI"], out["FUND_AF"]
        out["FUND"] = {
            "IN": np.maximum(ai["IN"], af["IN"]),
            "MAT": ai["MAT"] + af["MAT"],
            "DOC": np.maximum(ai["DOC"], af["DOC"]) + np.rint(0.8 * np.minimum(ai["DOC"], af["DOC"])).astype(np.int64),
            "TUR": ai["TUR"] + af["TUR"],
        }
        for st in SIMULATED:  # a stage with no pupils is not on offer this year
            getattr(self, f"offers_{st.suffix}")[idx] &= out[st.suffix]["MAT"] > 0
        out["BAS"] = {kind: cast(np.ndarray, sum(out[s][kind] for s in _BASIC)) for kind in ("MAT", "DOC", "TUR")}
        return out

    def render(self, year: int) -> tuple[pl.DataFrame, dict[str, dict[str, int]]]:
        """This year's rows as one table in INEP's column order, plus the true totals per stage."""
        renderer, truth = self._renderer(year)
        return renderer.frame(catalog.columns_for_year(year)), truth

    def render_tables(self, year: int, release: catalog.Release) -> tuple[dict[str, pl.DataFrame], dict[str, dict[str, int]]]:
        """This year's tables in the multi-table layout (Escola: every school; the count tables:
        schools with activity, counts filled with zeros), plus the true totals per stage."""
        renderer, truth = self._renderer(year)
        c = renderer.counts
        activity = renderer.active & ((c["BAS"]["MAT"] > 0) | (c["BAS"]["TUR"] > 0) | (c["BAS"]["DOC"] > 0))
        tables = {catalog.SCHOOL_TABLE: renderer.frame(release.header(catalog.SCHOOL_TABLE))}
        for table in catalog.COUNT_TABLES:
            tables[table] = renderer.frame(release.header(table), activity)
        tables["Gestor_Escolar"] = renderer.frame(release.header("Gestor_Escolar"), renderer.active)
        tables["Curso_Tecnico"] = renderer.frame(release.header("Curso_Tecnico"), c["PROF_TEC"]["MAT"] > 0)
        return tables, truth

    def _renderer(self, year: int) -> tuple[_Renderer, dict[str, dict[str, int]]]:
        rows = np.flatnonzero(np.isin(self.status[: self.n], (_ACTIVE, _PARALYSED, _EXTINCT_NOW, _EXTINCT_BEFORE)))
        rows = rows[np.argsort(self.code[rows], kind="stable")]
        counts = self.stage_counts(rows)
        active = self.status[rows] == _ACTIVE
        renderer = _Renderer(self, year, rows, counts, active)
        truth = {
            f"IN_{suffix}": {
                "enrollment": int(c["MAT"][active].sum()),
                "teachers": int(c["DOC"][active].sum()),
                "classes": int(c["TUR"][active].sum()),
                "schools": int(c["IN"][active].sum()),
            }
            for suffix, c in counts.items() if suffix != "BAS"
        }
        return renderer, truth


class _Renderer:
    """Builds one year's columns; columns the pipeline never reads get cheap, stable filler."""

    def __init__(self, sim: CensusSimulator, year: int, rows: np.ndarray, counts, active: np.ndarray):
        self.sim, self.year, self.rows, self.counts, self.active = sim, year, rows, counts, active
        self.blanks = catalog.blanks_for_missing(year)
        self.keys = sim.key[rows]
        self.n = len(rows)

    def _numeric(self, values: np.ndarray, active_only: bool = True) -> pl.Series:
        values = np.asarray(values, dtype=np.int64)
        if not active_only:
            return pl.Series(values)
        if self.blanks:
            return pl.Series(values).set(pl.Series(~self.active), None)
        return pl.Series(np.where(self.active, values, 0))

    def _text(self, values: list[str] | np.ndarray, active_only: bool = False) -> pl.Series:
        series = pl.Series(values, dtype=pl.String)
        if active_only:
            series = series.set(pl.Series(~self.active), None)
        return series

    def _bits(self, shift: int, modulo: int) -> np.ndarray:
        return ((self.keys >> np.uint64(shift % 60)) % np.uint64(modulo)).astype(np.int64)

    def frame(self, header: tuple[str, ...], keep: np.ndarray | None = None) -> pl.DataFrame:
        """The named columns for every school (or those where `keep`); a column keeps its
        values whatever table or position it is written in."""
        if not hasattr(self, "_known"):
            self._known = self._columns()
        columns = [self._known[name].alias(name) if name in self._known else self._filler(name) for name in header]
        frame = pl.DataFrame(columns)
        return frame if keep is None else frame.filter(pl.Series(keep))

    def _columns(self) -> dict[str, pl.Series]:
        sim, rows, year = self.sim, self.rows, self.year
        muni = sim.muni[rows]
        uf = sim.muni_uf[muni]
        uf_info = {code: (abbr, name, region) for code, abbr, name, region in catalog.UFS}
        known: dict[str, pl.Series] = {
            YEAR: pl.Series(np.full(self.n, year)),
            "NO_REGIAO": self._text([catalog.REGIONS[uf_info[u][2]] for u in uf]),
            "CO_REGIAO": pl.Series([uf_info[u][2] for u in uf]),
            "NO_UF": self._text([uf_info[u][1] for u in uf]),
            "SG_UF": self._text([uf_info[u][0] for u in uf]),
            "CO_UF": pl.Series(uf),
            "NO_MUNICIPIO": self._text([sim.muni_name[m] for m in muni]),
            "CO_MUNICIPIO": pl.Series(sim.muni_code[muni]),
            "CO_DISTRITO": pl.Series(sim.muni_code[muni] * 100 + 5),
            SCHOOL: pl.Series(sim.code[rows]),
            "NO_ENTIDADE": self._text([sim.names[i] for i in rows]),
            "TP_DEPENDENCIA": pl.Series(sim.dep[rows]),
            "TP_LOCALIZACAO": pl.Series(sim.loc[rows]),
            "TP_SITUACAO_FUNCIONAMENTO": pl.Series(sim.status[rows]),
            "CO_ORGAO_REGIONAL": pl.Series(uf * 1000 + 1),
            "DS_ENDERECO": self._text([f"RUA {_NAME_WORDS[k % len(_NAME_WORDS)]}" for k in self._bits(3, 1 << 20)]),
            "CO_CEP": pl.Series(10_000_000 + self._bits(11, 89_999_999)),
            "NU_TELEFONE": self._telephone(),
            "DT_ANO_LETIVO_INICIO": self._date(2, 1 + self._bits(17, 12)),
            "DT_ANO_LETIVO_TERMINO": self._date(12, 10 + self._bits(19, 12)),
        }
        private = sim.dep[rows] == 4
        cnpj = 10_000_000_000_000 + self._bits(23, 89_999_999_999)
        cnpj_series = pl.Series(cnpj).set(pl.Series(~(private & self.active)), None if self.blanks else 0)
        known["NU_CNPJ_ESCOLA_PRIVADA"] = cnpj_series
        known["NU_CNPJ_MANTENEDORA"] = cnpj_series
        known["TP_CATEGORIA_ESCOLA_PRIVADA"] = pl.Series(np.where(private, 1 + self._bits(29, 4), 0)).set(
            pl.Series(~(private & self.active)), None if self.blanks else 0
        )
        known.update(self._stage_columns())
        return known

    def _telephone(self) -> pl.Series:
        digits = (30_000_000 + self._bits(31, 69_999_999)).astype(str).astype(object)
        missing = self._bits(37, 10) == 0
        digits[missing] = None if self.blanks else "."
        return self._text(list(digits), active_only=self.blanks)

    def _date(self, month: int, day: np.ndarray) -> pl.Series:
        written = catalog.date_format(self.year)  # English month abbreviations: Python's C locale
        return self._text([date(self.year, month, int(d)).strftime(written).upper() for d in day], active_only=True)

    def _stage_columns(self) -> dict[str, pl.Series]:
        c = self.counts
        out: dict[str, pl.Series] = {}
        for st in catalog.STAGES:  # a year's header keeps the offer flags only where INEP publishes them
            data = c[st.suffix]
            out[st.flag] = self._numeric(data["IN"])
            out[st.enrollment] = self._numeric(data["MAT"])
            out[st.teachers] = self._numeric(data["DOC"])
            out[st.classes] = self._numeric(data["TUR"])
        for suffix, first_grade in (("FUND_AI", 1), ("FUND_AF", 6)):
            grades = c[suffix]["grades"]
            for g in range(grades.shape[1]):
                out[f"QT_MAT_{suffix}_{first_grade + g}"] = self._numeric(grades[:, g])
        # high school per grade: all in the proprietary track (PROP); the other tracks and the
        # non-graded (NS) columns are 0, so that every breakdown adds up to QT_MAT_MED
        med = c["MED"]["grades"]
        zero = np.zeros(self.n, dtype=np.int64)
        for med_grade in (1, 2, 3, 4, "NS"):
            grade = med[:, med_grade - 1] if isinstance(med_grade, int) and med_grade <= med.shape[1] else zero
            out[f"QT_MAT_MED_{med_grade}"] = self._numeric(grade)
            for track in ("PROP", "CT", "NM", "IFTP_CT", "IFTP_QP"):
                out[f"QT_MAT_MED_{track}_{med_grade}"] = self._numeric(grade if track == "PROP" else zero)
        for track in ("PROP", "CT", "NM", "IFTP_CT", "IFTP_QP", "IFA"):
            out[f"QT_MAT_MED_{track}"] = self._numeric(c["MED"]["MAT"] if track == "PROP" else zero)
        mat = {k: v["MAT"] for k, v in c.items()}
        out["QT_MAT_INF"] = self._numeric(mat["INF_CRE"] + mat["INF_PRE"])
        out["IN_INF"] = self._numeric(np.maximum(c["INF_CRE"]["IN"], c["INF_PRE"]["IN"]))
        out["IN_EJA"] = self._numeric(np.maximum(c["EJA_FUND"]["IN"], c["EJA_MED"]["IN"]))
        out["QT_MAT_EJA"] = self._numeric(mat["EJA_FUND"] + mat["EJA_MED"])
        total = c["BAS"]["MAT"]
        out["QT_MAT_BAS"] = self._numeric(total)
        out["IN_BAS"] = self._numeric((total > 0).astype(np.int64))
        out["QT_DOC_BAS"] = self._numeric(c["BAS"]["DOC"])
        out["QT_TUR_BAS"] = self._numeric(c["BAS"]["TUR"])
        bands = {
            "QT_MAT_BAS_0_3": mat["INF_CRE"],
            "QT_MAT_BAS_4_5": mat["INF_PRE"],
            "QT_MAT_BAS_6_10": np.rint(0.93 * mat["FUND_AI"] + 0.02 * mat["FUND_AF"]),
            "QT_MAT_BAS_11_14": np.rint(0.07 * mat["FUND_AI"] + 0.78 * mat["FUND_AF"] + 0.05 * mat["MED"]),
            "QT_MAT_BAS_15_17": np.rint(0.18 * mat["FUND_AF"] + 0.75 * mat["MED"] + 0.3 * mat["PROF_TEC"]),
        }
        bands["QT_MAT_BAS_18_MAIS"] = np.maximum(total - sum(bands.values()), 0)
        out.update({k: self._numeric(v) for k, v in bands.items()})
        out["QT_SALAS_UTILIZADAS"] = self._numeric(np.maximum(1, np.rint(c["FUND"]["TUR"] * 0.6 + c["INF_CRE"]["TUR"] + 2)))
        return out

    def _filler(self, name: str) -> pl.Series:
        """Stable per-school values for columns the pipeline does not read (the same in any layout)."""
        pos = zlib.crc32(name.encode()) % 60
        if name.startswith(("NO_", "SG_", "DS_", "DT_")) or name in ("NU_ENDERECO",):
            text = "SN" if name == "NU_ENDERECO" else None
            return pl.Series(name, [text] * self.n, dtype=pl.String).set(pl.Series(~self.active), None)
        if name.startswith("IN_"):
            values = self._bits(pos, 2)
            if name in catalog.INFRASTRUCTURE_FLAGS:
                values = np.where(self._bits(pos + 5, 97) == 0, 9, values)  # INEP's "not informed"
            return self._numeric(values).alias(name)
        if name.startswith("QT_"):
            values = np.where(self._bits(pos, 5) == 0, self._bits(pos + 3, 12), 0)
            if name.startswith("QT_PROF_") and self.year >= 2019:
                values = np.where(self._bits(pos + 1, 1000) == 0, 88888, values)
            return self._numeric(values).alias(name)
        if name.startswith("TP_"):
            return self._numeric(1 + self._bits(pos, 3)).alias(name)
        if name.startswith("CO_REGIAO_GEOG"):
            return pl.Series(name, self.sim.muni_uf[self.sim.muni[self.rows]] * 100 + 1)
        if name.startswith(("CO_MESO", "CO_MICRO")):
            return pl.Series(name, self.sim.muni_uf[self.sim.muni[self.rows]] * 1000 + 1)
        return pl.Series(name, [None] * self.n, dtype=pl.Int64)


# ----------------------------------------------------------------------- files
class _LegacyZipInfo(zipfile.ZipInfo):
    """Store member names as raw bytes without the UTF-8 flag, as INEP's archiver does."""

    def _encodeFilenameFlags(self):  # noqa: N802 - zipfile's own hook name
        return self.filename.encode("utf-8"), self.flag_bits & ~0x800


def _member(name: str, year: int) -> zipfile.ZipInfo:
    info = _LegacyZipInfo(name, date_time=(min(year + 1, 2107), 3, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def frame_to_csv_bytes(frame: pl.DataFrame) -> bytes:
    """INEP's dialect: ';', no quoting, LF, latin-1, blank for missing."""
    buffer = io.BytesIO()
    frame.write_csv(buffer, separator=";", quote_style="never", null_value="", line_terminator="\n")
    return buffer.getvalue().decode("utf-8").encode(catalog.CSV_ENCODING)


EMPTY_XLSX = b"PK\x05\x06" + b"\0" * 18  # an empty zip stands in for the data dictionary
EMPTY_PDF = b"%PDF-1.4\n%%EOF\n"


def write_year_zip(path: Path, year: int, csv_bytes: bytes) -> None:
    """A one-table year as INEP packs it (member names from `catalog`)."""
    folder = catalog.zip_folder(year)
    companions = catalog.companion_members(folder, year)
    md5 = hashlib.md5(csv_bytes).hexdigest()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(_member(companions["dictionary"], year), EMPTY_XLSX)
        zf.writestr(_member(catalog.data_member_name(year), year), csv_bytes, compresslevel=6)
        zf.writestr(_member(catalog.md5_member_name(year, folder), year), f"{md5} *{catalog.data_file_name(year)}\n".encode())
        if "supplement" in companions:
            supplement = f"{YEAR};{SCHOOL};CO_CURSO_EDUC_PROFISSIONAL\n{year};11000023;1\n".encode()
            zf.writestr(_member(companions["supplement"], year), supplement)
        zf.writestr(_member(companions["readme"], year), EMPTY_PDF)
    atomic.write_bytes(path, buffer.getvalue())


def write_tables_zip(path: Path, year: int, tables: dict[str, bytes], release: catalog.Release) -> None:
    """A multi-table year as INEP packs it: `<folder>/dados/Tabela_<X>_<year>[_V2].csv`, an md5
    list beside them, and the leia-me and Anexos folders (member names from `catalog`)."""
    folder = release.folder(year)
    companions = catalog.companion_members(folder, year)
    lines = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(_member(companions["dictionary"], year), EMPTY_XLSX)
        for table, data in tables.items():
            name = release.member(table, year)
            zf.writestr(_member(name, year), data, compresslevel=6)
            lines.append(f"{hashlib.md5(data).hexdigest()} *{name.rsplit('/', 1)[-1]}\n")
        zf.writestr(_member(catalog.md5_member_name(year, folder, multi_table=True), year), "".join(lines).encode())
        zf.writestr(_member(companions["readme"], year), EMPTY_PDF)
    atomic.write_bytes(path, buffer.getvalue())


def generate(out_dir: Path, settings: SynthSettings, jobs: int = 1) -> dict[int, dict[str, dict[str, int]]]:
    """Write one INEP-layout zip per year and `synthetic_totals.csv`; return the true totals."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    years = sorted(settings.years)
    if years != list(range(years[0], years[-1] + 1)):
        raise ValueError(f"synthetic years must be consecutive, got {years}")
    sim = CensusSimulator(settings)
    sim.initialise(years[0])
    truths: dict[int, dict[str, dict[str, int]]] = {}
    factors: dict[int, np.ndarray] = {}  # each municipality's demographic factor per year: its births follow it

    release = catalog.FIRST_RELEASE if settings.first_release else catalog.REPUBLICATION

    def write(year: int, frame: pl.DataFrame) -> None:
        write_year_zip(out_dir / catalog.zip_name(year), year, frame_to_csv_bytes(frame))
        log.info("synthetic census %d: %d rows", year, frame.height)

    def write_tables(year: int, tables: dict[str, pl.DataFrame]) -> None:
        write_tables_zip(out_dir / release.zip_name(year), year, {t: frame_to_csv_bytes(f) for t, f in tables.items()}, release)
        log.info("synthetic census %d: %d schools in %d tables (%s)", year, tables[catalog.SCHOOL_TABLE].height,
                 len(tables), release.zip_name(year))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = []
        for year in years:
            if year != years[0]:
                sim.step(year)
            factors[year] = sim.muni_factor.copy()
            if year >= settings.tables_from:
                tables, truths[year] = sim.render_tables(year, release)
                futures.append(pool.submit(write_tables, year, tables))
            else:
                frame, truths[year] = sim.render(year)
                futures.append(pool.submit(write, year, frame))
        for f in futures:
            f.result()
    rows = [
        {YEAR: y, STAGE: flag, **vals}
        for y, per_stage in truths.items()
        for flag, vals in per_stage.items()
    ]
    atomic.write_csv(out_dir / "synthetic_totals.csv", pl.DataFrame(rows))
    demography.write(out_dir / demography.FOLDER, sim.muni_code, sim.muni_weight, sim.muni_growth, factors,
                     settings.schools, settings.seed)
    return truths
