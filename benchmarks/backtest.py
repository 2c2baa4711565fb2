"""Back-test of what the product publishes, on a real census (by default Alagoas, 2008-2021,
`../shared/real/alagoas`).

For every origin T0: `run`, as a user would, on the census years <= T0 (its choice, refit,
intervals, new offerings and aggregation, default settings), in an output folder of its
own; then its published forecast files for T0+1 .. T0+5 are scored against the census years
it never saw (those the folder has):

- per school: MAE of the published forecast, of persistence (the last census) and of a
  stage-wide drift known at T0 (the stage's aggregate ratio of continuing offers from T0-1
  to T0, compounded h times), both baselines computed here, independently of the product;
- municipal totals: WAPE of the published totals (every school and every new offering)
  against persistence's (the municipality's census total at T0) and, given births
  (`--demography` or `--births`), against the births-scaled baseline's (that total times the
  municipality's birth cohorts of the stage's ages in T0+h over those in T0, births known at
  T0 only; per school the same ratio on the school's last census), computed here;
- state totals: absolute % error, against persistence's;
- coverage of the 80 % and 95 % intervals of schools, municipalities and the state, over
  the origins whose run publishes intervals at that horizon (a run too short to validate a
  horizon publishes none; `origins_with_intervals` says how many did);
- the state's path T0 -> T0+5 (every forecast year, seen or not): its largest year-to-year
  change against the largest of the state's census history up to T0;
- the stage identity (all elementary = early + final elementary, where the three are run):
  the largest gap between a sum's point forecast and its parts' in every published forecast
  file, per school, municipality, state and the country.

The truth is training's: a school that no longer offers the stage, closed or left the
census counts 0. The walk-forward rows of the same runs (resultados_finais.csv) are printed
beside: they skip the refit, the choice, the new offerings and the aggregation.

    python benchmarks/backtest.py [--raw DIR] [--origins 2013-2020] [--stages IN_MED,...] [--work DIR] [--demography DIR]

A finished origin's folder is reused (delete it, or pass --fresh, to run it again).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import polars as pl

from censo_forecast import coherence, features, outputs, pipeline
from censo_forecast.config import load_settings
from censo_forecast.inep import catalog, ingest
from censo_forecast.inep.catalog import MAJOR_STAGES, SCHOOL, YEAR
from censo_forecast.panel import build_panel, stage_view

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "real" / "alagoas"
KEY = [SCHOOL, YEAR, outputs.STAGE]


def truth_by_school(panel: pl.DataFrame, stages: list[str]) -> pl.DataFrame:
    """(school, year, stage) -> enrollment by training's truth rule; schools absent count 0 (filled when joined)."""
    frames = [stage_view(panel, flag).select(SCHOOL, YEAR, "CO_MUNICIPIO", pl.lit(flag).alias(outputs.STAGE),
                                             features.enrolled().cast(pl.Float64).alias("real"))
              for flag in stages]
    return pl.concat(frames)


def drift_ratio(truth: pl.DataFrame, flag: str, origin: int) -> float:
    """The stage's aggregate ratio of continuing offers into the origin: what the schools that
    offered it in origin-1 had in origin (0 when they stopped) over what they had in origin-1."""
    rows = truth.filter(pl.col(outputs.STAGE) == flag)
    before = rows.filter((pl.col(YEAR) == origin - 1) & (pl.col("real") > 0)).select(SCHOOL, pl.col("real").alias("before"))
    after = rows.filter(pl.col(YEAR) == origin).select(SCHOOL, pl.col("real").alias("after"))
    joined = before.join(after, on=SCHOOL, how="left").with_columns(pl.col("after").fill_null(0.0))
    return float(joined["after"].sum() / joined["before"].sum())


def read_births(folder: Path | None) -> pl.DataFrame | None:
    """Live births per (7-digit municipality, year) from the folder's births CSV (the shared format)."""
    if folder is None:
        return None
    path = next(p for p in sorted(Path(folder).glob("*.csv")) if "live_births" in p.read_text(encoding="utf-8")[:200])
    return (pl.read_csv(path, schema_overrides={"cod_mun7": pl.String}).filter(pl.col("cod_mun7").is_not_null())
            .select(pl.col("cod_mun7").cast(pl.Int64).alias("CO_MUNICIPIO"), "year", pl.col("live_births").cast(pl.Float64)))


def births_ratio(births: pl.DataFrame, flag: str, origin: int, h: int) -> pl.DataFrame:
    """Per municipality: the births of the stage's ages in origin + h over those in origin, counting
    only births known at the origin (years <= origin - 1; a later birth year is taken as origin - 1's);
    computed here from the CSV, independently of the product."""
    ages = catalog.stage(flag).ages
    if ages is None:
        return pl.DataFrame(schema={"CO_MUNICIPIO": pl.Int64, "ratio": pl.Float64})
    known = births.filter(pl.col("year") <= origin - 1)

    def cohort(target: int, name: str) -> pl.DataFrame:
        years = [min(target - a, origin - 1) for a in range(ages[0], ages[1] + 1)]
        picked = pl.concat([known.filter(pl.col("year") == y) for y in years])
        return picked.group_by("CO_MUNICIPIO").agg(pl.col("live_births").sum().alias(name), pl.len().alias(f"{name}_n"))

    joined = cohort(origin + h, "then").join(cohort(origin, "now"), on="CO_MUNICIPIO")
    whole = (pl.col("then_n") == len(range(ages[0], ages[1] + 1))) & (pl.col("now_n") == pl.col("then_n")) & (pl.col("now") > 0)
    return joined.filter(whole).select("CO_MUNICIPIO", (pl.col("then") / pl.col("now")).alias("ratio"))


def run_origin(raw: Path, work: Path, origin: int, first: int, stages: list[str], fresh: bool,
               demography: Path | None = None) -> Path:
    out = work / f"out_{origin}"
    if fresh and out.exists():
        shutil.rmtree(out)
    if not (out / outputs.METADATA).exists() or not (out / outputs.REPORT).exists():
        settings = load_settings(None, raw_dir=raw, cache_dir=work / "cache", out_dir=out, offline=True, device="cpu",
                                 years=list(range(first, origin + 1)), stages=stages, demography=demography)
        started = time.perf_counter()
        pipeline.run(settings)
        print(f"origin {origin}: run in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def inside(level: int) -> pl.Expr:
    low, high = outputs.bound("inferior", level), outputs.bound("superior", level)
    return ((pl.col("real") >= pl.col(low)) & (pl.col("real") <= pl.col(high))).cast(pl.Float64)


def score_origin(out: Path, origin: int, truth: pl.DataFrame, last_year: int, stages: list[str],
                 births: pl.DataFrame | None = None) -> list[dict]:
    rows = []
    for year in range(origin + 1, last_year + 1):
        h = year - origin
        path = out / outputs.forecast_file(year, suffix=".parquet")
        if not path.exists():
            continue
        schools = (pl.read_parquet(path).with_columns(pl.lit(year, dtype=truth.schema[YEAR]).alias(YEAR))
                   .join(truth.select(*KEY, "real"), on=KEY, how="left").with_columns(pl.col("real").fill_null(0.0)))
        numbers = dict.fromkeys((outputs.FORECAST, *outputs.BOUNDS), pl.Float64)  # empty where a horizon was never validated
        munis = pl.read_csv(out / outputs.forecast_file(year, outputs.MUNICIPALITIES), schema_overrides=numbers)
        state = pl.read_csv(out / outputs.forecast_file(year, outputs.STATES), schema_overrides=numbers)
        for flag in stages:
            s = schools.filter(pl.col(outputs.STAGE) == flag)
            if s.height == 0:
                continue
            ratio = drift_ratio(truth, flag, origin)
            last = pl.col(outputs.LAST_ENROLLMENT)
            s = s.with_columns((last * ratio**h).alias("drift"))
            scaled = (births_ratio(births, flag, origin, h) if births is not None
                      else pl.DataFrame(schema={"CO_MUNICIPIO": pl.Int64, "ratio": pl.Float64}))
            s = (s.join(scaled, on="CO_MUNICIPIO", how="left")
                 .with_columns((last * pl.col("ratio").fill_null(1.0)).alias("births_scaled")))
            err = lambda c: (pl.col(c) - pl.col("real")).abs().mean()  # noqa: E731
            school = s.select(err(outputs.FORECAST).alias("mae"), err(outputs.LAST_ENROLLMENT).alias("mae_persistence"),
                              err("drift").alias("mae_drift"), err("births_scaled").alias("mae_births"),
                              inside(80).mean().alias("cov80_school"),
                              inside(95).mean().alias("cov95_school")).row(0, named=True)
            actual = (truth.filter((pl.col(outputs.STAGE) == flag) & (pl.col(YEAR) == year))
                      .group_by("CO_MUNICIPIO").agg(pl.col("real").sum()))
            at_origin = (truth.filter((pl.col(outputs.STAGE) == flag) & (pl.col(YEAR) == origin))
                         .group_by("CO_MUNICIPIO").agg(pl.col("real").sum().alias("persistence")))
            m = (munis.filter(pl.col(outputs.STAGE) == flag).join(actual, on="CO_MUNICIPIO", how="full", coalesce=True)
                 .join(at_origin, on="CO_MUNICIPIO", how="left")
                 .with_columns(pl.col("real", "persistence", outputs.FORECAST).fill_null(0.0))
                 .join(scaled, on="CO_MUNICIPIO", how="left")
                 .with_columns((pl.col("persistence") * pl.col("ratio").fill_null(1.0)).alias("births_scaled")))
            total = m["real"].sum()
            st = state.filter(pl.col(outputs.STAGE) == flag).row(0, named=True)
            rows.append({
                "etapa": flag, "origin": origin, "h": h, "year": year, "schools": s.height, **school,
                "wape_muni": float((m[outputs.FORECAST] - m["real"]).abs().sum() / total),
                "wape_muni_persistence": float((m["persistence"] - m["real"]).abs().sum() / total),
                "wape_muni_births": float((m["births_scaled"] - m["real"]).abs().sum() / total),
                # coverage where intervals are published (a horizon the run could not validate has none)
                "cov80_muni": m.filter(pl.col(outputs.LOWER_80).is_not_null()).select(inside(80).mean()).item(),
                "cov95_muni": m.filter(pl.col(outputs.LOWER_95).is_not_null()).select(inside(95).mean()).item(),
                "ape_state": abs(st[outputs.FORECAST] / total - 1), "ape_state_persistence": abs(m["persistence"].sum() / total - 1),
                "in80_state": None if st[outputs.LOWER_80] is None else st[outputs.LOWER_80] <= total <= st[outputs.UPPER_80],
                "in95_state": None if st[outputs.LOWER_95] is None else st[outputs.LOWER_95] <= total <= st[outputs.UPPER_95],
            })
    return rows


def path_jumps(out: Path, origin: int, truth: pl.DataFrame, stages: list[str]) -> list[dict]:
    """Per stage: the largest year-to-year change of the published state path (from the census
    total at T0 through T0+1 .. T0+5) and the largest the state's census showed up to T0."""
    years = sorted(int(p.name.split("_")[1]) for p in out.glob("previsoes_*_ufs.csv"))
    rows = []
    for flag in stages:
        history = (truth.filter((pl.col(outputs.STAGE) == flag) & (pl.col(YEAR) <= origin)).group_by(YEAR)
                   .agg(pl.col("real").sum()).sort(YEAR)["real"].to_list())
        path = [history[-1]] + [pl.read_csv(out / outputs.forecast_file(y, outputs.STATES), schema_overrides={outputs.FORECAST: pl.Float64})
                                .filter(pl.col(outputs.STAGE) == flag)[outputs.FORECAST][0] for y in years]
        change = lambda values: max(abs(b / a - 1) for a, b in zip(values, values[1:], strict=False) if a)  # noqa: E731
        rows.append({"etapa": flag, "origin": origin, "path_largest_change": change(path), "history_largest_change": change(history)})
    return rows


def _summed(frame: pl.DataFrame, keys: list[str], flags: list[str], name: str) -> pl.DataFrame:
    return frame.filter(pl.col(outputs.STAGE).is_in(flags)).group_by(keys).agg(pl.col(outputs.FORECAST).sum().alias(name))


def identity_gaps(out: Path, origin: int, stages: list[str]) -> list[dict]:
    """Per published forecast file and sum of stages: the largest |sum - its parts| of the
    point forecast over the file's schools or areas (a key a part lacks counts 0)."""
    rows = []
    sums = coherence.reconcilable(stages)
    for path in sorted(out.glob("previsoes_*")) if sums else []:
        frame = (pl.read_parquet(path) if path.suffix == ".parquet"
                 else pl.read_csv(path, schema_overrides={outputs.FORECAST: pl.Float64}))
        keys = [next(c for c in (SCHOOL, "CO_MUNICIPIO", "CO_UF", outputs.COUNTRY_KEY) if c in frame.columns)]
        keys += [outputs.HORIZON] if outputs.HORIZON in frame.columns else []
        for total, parts in sums.items():
            joined = (_summed(frame, keys, [total], "total")
                      .join(_summed(frame, keys, list(parts), "parts"), on=keys, how="full", coalesce=True).fill_null(0.0))
            rows.append({"origin": origin, "file": path.name, "etapa": total, "keys": joined.height,
                         "max_gap": float((joined["total"] - joined["parts"]).abs().max() or 0.0)})
    return rows


def walk_forward_rows(out: Path, origin: int, stages: list[str]) -> pl.DataFrame:
    results = pl.read_csv(out / outputs.RESULTS).filter(pl.col(outputs.CHOSEN) & pl.col(outputs.STAGE).is_in(stages))
    return results.select(outputs.STAGE, pl.col(outputs.HORIZON).alias("h"), pl.lit(origin).alias("origin"),
                          pl.col(outputs.SKILL_VS_PERSISTENCE).alias("cv_skill"))


def summarise(scores: pl.DataFrame, cv: pl.DataFrame) -> pl.DataFrame:
    """Per stage and horizon, means over origins; skill = 1 - MAE / baseline MAE."""
    table = scores.group_by(outputs.STAGE, "h").agg(
        pl.len().alias("origins"), pl.col("mae", "mae_persistence", "mae_drift", "mae_births").mean(),
        (1 - pl.col("mae") / pl.col("mae_persistence")).min().alias("worst_skill"),
        pl.col("wape_muni", "wape_muni_persistence", "wape_muni_births", "ape_state", "ape_state_persistence",
               "cov80_school", "cov95_school", "cov80_muni", "cov95_muni").mean(),
        pl.col("in80_state", "in95_state").cast(pl.Float64).mean(),
        pl.col("in80_state").is_not_null().sum().alias("origins_with_intervals"))
    table = table.with_columns((1 - pl.col("mae") / pl.col("mae_persistence")).alias("skill_vs_persistence"),
                               (1 - pl.col("mae") / pl.col("mae_drift")).alias("skill_vs_drift"),
                               (1 - pl.col("mae") / pl.col("mae_births")).alias("skill_vs_births"))
    walk = cv.group_by(outputs.STAGE, "h").agg(pl.col("cv_skill").mean())
    return table.join(walk, on=[outputs.STAGE, "h"], how="left").sort(outputs.STAGE, "h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=REAL, help="the census zips (default: ../shared/real/alagoas)")
    parser.add_argument("--origins", default="2013-2020", help="origin years T0 (default 2013-2020)")
    parser.add_argument("--first", type=int, default=None, help="first census year a run reads (default: the folder's first)")
    parser.add_argument("--stages", default=",".join(MAJOR_STAGES), help="offer flags (default: the five major stages)")
    parser.add_argument("--work", type=Path, default=HERE / "data" / "backtest", help="cache and one output folder per origin")
    parser.add_argument("--fresh", action="store_true", help="run every origin again")
    parser.add_argument("--demography", type=Path, default=None,
                        help="births and population for the runs (../shared/demography); default: without")
    parser.add_argument("--births", type=Path, default=None,
                        help="births for the births-scaled baseline only (default: --demography's)")
    args = parser.parse_args()
    stages, origins = catalog.parse_stages(args.stages), catalog.parse_years(args.origins)
    available = sorted(ingest.raw_zips(args.raw))
    first = args.first or available[0]
    args.work.mkdir(parents=True, exist_ok=True)
    ingest.ingest(args.raw, args.work / "cache", available, jobs=2).raise_for_failures()
    truth = truth_by_school(build_panel(ingest.load_cache(args.work / "cache", available)), stages)
    births = read_births(args.births or args.demography)
    scores, cv, paths, gaps = [], [], [], []
    for origin in origins:
        out = run_origin(args.raw, args.work, origin, first, stages, args.fresh, args.demography)
        scores += score_origin(out, origin, truth, available[-1], stages, births)
        cv.append(walk_forward_rows(out, origin, stages))
        paths += path_jumps(out, origin, truth, stages)
        gaps += identity_gaps(out, origin, stages)
    per_origin = pl.DataFrame(scores)
    per_origin.write_csv(args.work / "backtest_by_origin.csv")
    table = summarise(per_origin, pl.concat(cv))
    table.write_csv(args.work / "backtest_summary.csv")
    with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=250, float_precision=3):
        print(table.select(outputs.STAGE, "h", "origins", "mae", "mae_persistence", "mae_drift", "skill_vs_persistence",
                           "skill_vs_drift", "skill_vs_births", "worst_skill", "cv_skill"))
        print(table.select(outputs.STAGE, "h", "wape_muni", "wape_muni_persistence", "wape_muni_births", "ape_state",
                           "ape_state_persistence",
                           "cov80_school", "cov95_school", "cov80_muni", "cov95_muni", "in80_state", "in95_state",
                           "origins_with_intervals"))
        jumps = pl.DataFrame(paths).with_columns((pl.col("path_largest_change") > pl.col("history_largest_change")).alias("beyond"))
        jumps.write_csv(args.work / "backtest_state_paths.csv")
        print(jumps.group_by(outputs.STAGE).agg(pl.col("beyond").sum().alias("origins_beyond_history"), pl.len().alias("origins"),
                                                pl.col("path_largest_change", "history_largest_change").max()).sort(outputs.STAGE))
        if gaps:
            identity = pl.DataFrame(gaps)
            identity.write_csv(args.work / "backtest_identity.csv")
            print(identity.with_columns(pl.col("file").str.extract(r"previsoes_\d{4}_?(\w*)\.").alias("level"))
                  .group_by("etapa", "level").agg(pl.len().alias("files"), pl.col("keys").sum(), pl.col("max_gap").max())
                  .sort("etapa", "level"))


if __name__ == "__main__":
    main()
