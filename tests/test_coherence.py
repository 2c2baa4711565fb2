"""All elementary equals early plus final elementary in every forecast, at every level."""

from __future__ import annotations

import json
import logging

import numpy as np
import polars as pl
import pytest

from censo_forecast import coherence, modelstore, results, validation
from censo_forecast.config import ModelSettings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import ingest
from censo_forecast.outputs import BOUNDS, FORECAST, LOWER_80, MODEL, SUM_OF_PARTS, UPPER_80
from censo_forecast.runner import StageRunner

FAST = ModelSettings(n_estimators=20, num_leaves=15, max_depth=4)
PARTS = ("IN_FUND_AI", "IN_FUND_AF")


def test_the_sum_replaces_the_total_and_moves_its_bounds():
    frame = pl.DataFrame({
        "CO_ENTIDADE": [1, 1, 1, 2, 2], "NU_ANO_CENSO": [2026] * 5,
        "etapa": ["IN_FUND", "IN_FUND_AI", "IN_FUND_AF", "IN_FUND", "IN_FUND_AI"],
        "modelo": ["Voting", "LightGBM", "Coorte", "Voting", "Voting"],
        FORECAST: [100.0, 70.0, 40.0, 9.0, 3.0],
        LOWER_80: [90.0, 60.0, 30.0, 7.0, 1.0], UPPER_80: [115.0, 80.0, 50.0, 12.0, 6.0],
    })
    out = coherence.schools(frame)
    assert out.select("CO_ENTIDADE", "etapa").equals(frame.select("CO_ENTIDADE", "etapa"))  # rows stay in place
    total = out.filter(pl.col("etapa") == "IN_FUND").sort("CO_ENTIDADE")
    assert total[FORECAST].to_list() == [110.0, 3.0]  # school 2 has no final years: counted 0
    assert total[LOWER_80].to_list() == [100.0, 1.0]  # its own width, re-centred; never below 0
    assert total[UPPER_80].to_list() == [125.0, 6.0]
    assert set(total[MODEL]) == {SUM_OF_PARTS}
    assert out.filter(pl.col("etapa") != "IN_FUND").equals(frame.filter(pl.col("etapa") != "IN_FUND"))


def test_a_total_without_its_parts_stays_and_says_so(caplog):
    frame = pl.DataFrame({"CO_ENTIDADE": [1], "NU_ANO_CENSO": [2026], "etapa": ["IN_FUND"], FORECAST: [100.0]})
    with caplog.at_level(logging.WARNING):
        assert coherence.schools(frame).equals(frame)
    assert "IN_FUND is forecast on its own" in caplog.text


@pytest.fixture(scope="module")
def fitted(small_census, tmp_path_factory):
    raw, _ = small_census
    cache = tmp_path_factory.mktemp("cache")
    ingest.ingest(raw, cache, jobs=2).raise_for_failures()
    census = ingest.load_cache(cache, ingest.cached_years(cache))
    fc = EnrollmentForecaster(["IN_FUND", *PARTS], horizons=2, model=FAST, device="cpu", min_train_years=11, n_jobs=1)
    return fc.fit(census), census


def _identity(frame: pl.DataFrame, keys: list[str], column: str) -> pl.DataFrame:
    wide = frame.pivot(on="etapa", index=keys, values=column).fill_null(0.0)
    return wide.with_columns((pl.col("IN_FUND") - pl.col(PARTS[0]) - pl.col(PARTS[1])).abs().alias("gap"))


def test_every_school_and_area_adds_up(fitted):
    fc, census = fitted
    schools = fc.predict(census)
    gap = _identity(schools, ["CO_ENTIDADE", "NU_ANO_CENSO"], FORECAST)
    assert gap.height > 100 and gap["gap"].max() < 1e-6
    fund = schools.filter(pl.col("etapa") == "IN_FUND")
    assert (fund[LOWER_80] <= fund[FORECAST]).all() and (fund[FORECAST] <= fund[UPPER_80]).all()
    areas = fc.aggregate(census, schools)
    assert sorted(areas) == [2026, 2027]
    for year, levels in areas.items():
        for level, frame in levels.items():
            key = {"municipios": "CO_MUNICIPIO", "ufs": "CO_UF", "brasil": "pais"}[level]
            for column in (FORECAST, "previsao_escolas", "previsao_novas_ofertas", "matriculas_ultimo_ano"):
                assert _identity(frame, [key], column)["gap"].max() < 1e-6 * max(1.0, frame[column].abs().max()), (year, level, column)
            fund = frame.filter(pl.col("etapa") == "IN_FUND")
            for low, high in zip(BOUNDS[::2], BOUNDS[1::2], strict=True):
                assert ((fund[low] <= fund[FORECAST]) & (fund[FORECAST] <= fund[high])).all(), (year, level, low)


def test_the_sum_has_no_model_of_its_own_and_its_walk_forward_is_its_parts(fitted):
    """All elementary beside its parts: nothing fitted for it; its walk-forward per school is
    their walk-forward summed (every model, the truth, and the published sum of their choices),
    and it publishes that sum at every horizon."""
    fc, _ = fitted
    assert fc.models_["IN_FUND"] == coherence.SumOfParts(PARTS)
    assert fc.chosen_["IN_FUND"] == {1: SUM_OF_PARTS, 2: SUM_OF_PARTS}
    preds = {flag: frame for flag, frame in zip(fc.models_, fc.cv_.stage_predictions, strict=True)}
    keys = ["CO_ENTIDADE", "NU_ANO_CENSO", "ano_origem", "horizonte"]
    parts = pl.concat([preds[p].with_columns(
        pl.coalesce(pl.when(pl.col("horizonte") == h).then(pl.col(m)) for h, m in fc.chosen_[p].items()).alias("_published"))
        for p in PARTS], how="diagonal")
    expected = parts.group_by(keys).agg(pl.col("y_true", "Persistencia", "Voting", "_published").sum())
    both = preds["IN_FUND"].join(expected, on=keys, how="full", suffix="_parts")
    assert both.height == expected.height == preds["IN_FUND"].height > 100
    for column, summed in (("y_true", "y_true_parts"), ("Persistencia", "Persistencia_parts"), ("Voting", "Voting_parts"),
                           (SUM_OF_PARTS, "_published")):
        assert (both[column] - both[summed]).abs().max() < 1e-3, column
    table = fc.cv_.summary.filter(pl.col("etapa") == "IN_FUND")
    assert table.filter(pl.col("Escolhido"))["modelo"].to_list() == [SUM_OF_PARTS, SUM_OF_PARTS]
    calibration = fc.calibration_["IN_FUND"].filter(pl.col("horizonte") == 1)
    one = preds["IN_FUND"].filter(pl.col("horizonte") == 1)
    assert calibration["residual"].to_numpy() == pytest.approx((one["y_true"] - one[SUM_OF_PARTS]).to_numpy(), abs=1e-3)


def test_a_saved_sum_is_restored_as_the_sum_of_its_saved_parts(fitted, tmp_path):
    fc, census = fitted
    fc.save(tmp_path / "models")
    loaded = EnrollmentForecaster.load(tmp_path / "models")
    assert loaded.models_["IN_FUND"] == coherence.SumOfParts(PARTS)
    keys = ["etapa", "CO_ENTIDADE", "horizonte"]
    assert loaded.predict(census).sort(keys).equals(fc.predict(census).sort(keys))
    meta_path = tmp_path / "models" / modelstore.METADATA
    meta = json.loads(meta_path.read_text())
    meta["stages"]["IN_FUND"]["parts"] = ["IN_FUND_AI", "IN_MED"]  # a part that was not saved
    meta[modelstore.SELF_HASH] = modelstore._content_hash(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(modelstore.ModelStoreError, match="entry is damaged"):
        modelstore.load(tmp_path / "models")


def test_the_skill_of_a_sum_is_that_of_its_parts_choices_as_made():
    """At each origin each part publishes the model its walk-forward had chosen by then: the
    sum's skill scores their sum, not the choice made with every test year in hand."""
    def part(flag, truth, persistence, cohort, voting):
        frame = pl.DataFrame({"etapa": flag, "CO_ENTIDADE": [1, 1, 1], "NU_ANO_CENSO": [2020, 2021, 2022],
                              "ano_origem": [2019, 2020, 2021], "horizonte": [1, 1, 1], "CO_MUNICIPIO": 1, "CO_UF": 1,
                              "y_true": truth, "Persistencia": persistence, "Coorte": cohort, "Voting": voting},
                             schema_overrides={"horizonte": pl.Int32})
        folds = validation.fold_metrics(frame, flag, ["Persistencia", "Coorte", "Voting"])
        return validation.StageCV(flag, frame, pl.DataFrame(folds), 0.0)

    # early: Coorte best in 2020 (so chosen at 2020), Voting afterwards; final: Voting throughout
    early = part("IN_FUND_AI", [100.0, 100, 100], [90.0, 90, 90], [99.0, 80, 80], [95.0, 99, 99])
    final = part("IN_FUND_AF", [50.0, 50, 50], [40.0, 40, 40], [30.0, 30, 30], [48.0, 49, 49])
    total = coherence.walk_forward("IN_FUND", [(early, {1: "Voting"}), (final, {1: "Voting"})])
    skill = results.sum_of_parts_choice_skill(total, [early, final])
    # origin 2019 knows no fold; at 2020 early elementary has chosen Coorte (80 for 2021), at 2021
    # Voting (99 for 2022); final elementary Voting at both (49)
    made = [abs(80 + 49 - 150), abs(99 + 49 - 150)]
    persistence = [20.0, 20.0]
    assert skill["Skill_Escolha_vs_Persistencia"].item() == pytest.approx(1 - np.mean(made) / np.mean(persistence))
    table = results.stage_results(total, [early, final]).summary
    assert table.filter(pl.col("Escolhido"))["modelo"].item() == SUM_OF_PARTS
    assert table.filter(pl.col("Escolhido"))["Skill_Escolha_vs_Persistencia"].item() == pytest.approx(1 - np.mean(made) / 20)


def test_a_sum_whose_part_cannot_be_validated_is_validated_on_its_own():
    """The sum comes after its parts; when one is skipped it goes through the stage step
    like any other, and the stages come back in the order asked for."""
    runner = StageRunner(engine=None, factory=None, horizons=1, min_train_years=3)
    calls = []

    def step(panel, flag, years):
        calls.append(flag)
        if flag == "IN_FUND_AF":
            raise validation.CannotValidate("too few schools")
        return flag

    panel = pl.DataFrame({"NU_ANO_CENSO": [2020, 2021]})
    done = runner._each_stage(panel, ["IN_FUND", "IN_FUND_AI", "IN_FUND_AF", "IN_MED"], step, lambda flag, parts: f"sum {parts}")
    assert calls == ["IN_FUND_AI", "IN_FUND_AF", "IN_MED", "IN_FUND"] and done == ["IN_FUND", "IN_FUND_AI", "IN_MED"]
    assert runner.skipped == {"IN_FUND_AF": "too few schools"}
    done = runner._each_stage(panel, ["IN_FUND", "IN_FUND_AI", "IN_MED"], lambda p, flag, y: flag, lambda flag, parts: f"sum {parts}")
    assert done == ["IN_FUND", "IN_FUND_AI", "IN_MED"]
    done = StageRunner(None, None, horizons=1, min_train_years=3)._each_stage(
        panel, ["IN_FUND_AF", "IN_FUND", "IN_FUND_AI"], lambda p, flag, y: flag, lambda flag, parts: f"sum {parts}")
    assert done == ["IN_FUND_AF", "sum ['IN_FUND_AI', 'IN_FUND_AF']", "IN_FUND_AI"]
