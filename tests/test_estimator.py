"""`EnrollmentForecaster` keeps scikit-learn's contract: parameters stored as given and checked
in `fit` with the settings' rules, `clone` gives an equal unfitted estimator, nested model
settings through `set_params`, `n_jobs=-1` means every CPU, a stored walk-forward, `score`."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks

import censo_forecast
from censo_forecast import learners, machine
from censo_forecast.config import ModelSettings, load_settings
from censo_forecast.forecaster import EnrollmentForecaster
from censo_forecast.inep import ingest
from censo_forecast.panel import build_panel

FAST = ModelSettings(n_estimators=20, num_leaves=15, max_depth=4)
PUBLIC_METHODS = {"fit", "cross_validate", "predict", "aggregate", "score", "save", "load"}


@pytest.fixture(scope="module")
def census(small_census, tmp_path_factory):
    raw, _ = small_census
    cache = tmp_path_factory.mktemp("cache")
    ingest.ingest(raw, cache, jobs=2).raise_for_failures()
    return ingest.load_cache(cache, ingest.cached_years(cache))


@pytest.mark.parametrize("check", [
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_get_params_invariance,
    estimator_checks.check_set_params,
    estimator_checks.check_estimator_cloneable,
    estimator_checks.check_estimator_repr,
    estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
    estimator_checks.check_estimators_unfitted,
])
def test_scikit_learn_checks_that_apply(check):
    check("EnrollmentForecaster", EnrollmentForecaster(model=FAST))


def test_public_api():
    """What a user sees: the package's names, and the forecaster's methods besides scikit-learn's own."""
    assert set(censo_forecast.__all__) == {"EnrollmentForecaster", "ModelSettings", "Settings", "load_census", "load_settings"}
    methods = {n for n in dir(EnrollmentForecaster) if not n.startswith("_") and callable(getattr(EnrollmentForecaster, n))}
    assert methods - {"get_params", "set_params", "get_metadata_routing"} == PUBLIC_METHODS
    for name in PUBLIC_METHODS:  # numpydoc: each says what it takes, gives and raises
        doc = getattr(EnrollmentForecaster, name).__doc__
        assert "Parameters\n" in doc and "Returns\n" in doc and ("Raises\n" in doc), name


def test_clone_is_an_equal_unfitted_estimator(census):
    fc = EnrollmentForecaster(["IN_MED"], model=FAST, device="cpu", min_train_years=11, n_jobs=1).fit(census)
    twin = clone(fc)
    assert twin.get_params() == fc.get_params() and twin.model is not fc.model and twin.model == fc.model
    assert not hasattr(twin, "models_") and not hasattr(twin, "cv_")
    with pytest.raises(NotFittedError):
        twin.predict(census)


def test_nested_model_settings_through_set_params():
    fc = EnrollmentForecaster(model=FAST)
    assert fc.get_params(deep=True)["model__n_estimators"] == 20
    assert fc.set_params(model__learning_rate=0.05, horizons=3) is fc
    assert fc.model.learning_rate == 0.05 and fc.horizons == 3
    assert FAST.learning_rate == 0.1  # the settings given were copied, not changed
    assert EnrollmentForecaster().set_params(model__max_depth=3).model == ModelSettings(max_depth=3)
    with pytest.raises(ValueError, match="unknown \\[model\\] setting"):
        fc.set_params(model__depth=3)
    with pytest.raises(ValueError, match="learning_rate must be above 0"):
        fc.set_params(model__learning_rate=-1)


@pytest.mark.parametrize("params, message", [
    ({"horizons": 0}, "horizons must be between 1 and 10"),
    ({"horizons": 11}, "horizons must be between 1 and 10"),
    ({"device": "tpu"}, "device must be auto, cpu or cuda"),
    ({"n_jobs": 0}, "jobs must be a positive number"),
    ({"n_jobs": -3}, "leaves no CPU"),
    ({"min_train_years": 0}, "min_train_years must be at least 1"),
    ({"stages": ["IN_NOPE"]}, "unknown stage 'IN_NOPE'"),
    ({"stages": []}, "no stage given"),
    ({"model": {"n_estimators": 10}}, "model must be a ModelSettings"),
])
def test_parameters_are_checked_in_fit_with_the_settings_rules(census, params, message, monkeypatch):
    monkeypatch.setattr(machine, "available_cpus", lambda: 2)
    fc = EnrollmentForecaster(**params)  # stored as given
    with pytest.raises(ValueError, match=message):
        fc.fit(census)
    settings_key = {"n_jobs": "jobs"}.get(next(iter(params)), next(iter(params)))
    if settings_key != "model":  # the same rule, the same words, for the TOML and the CLI
        with pytest.raises(ValueError, match=message):
            load_settings(None, **{settings_key: next(iter(params.values()))})


def test_n_jobs_means_what_it_means_in_scikit_learn(monkeypatch):
    monkeypatch.setattr(machine, "available_cpus", lambda: 8)
    assert machine.effective_jobs(-1) == 8 and machine.effective_jobs(-2) == 7 and machine.effective_jobs(3) == 3
    with pytest.raises(ValueError):
        machine.effective_jobs(-9)
    assert load_settings(None, jobs=-1).threads == 8


def test_fit_always_validates_and_stores_it(census):
    """fit is one behaviour: the walk-forward runs, is kept in `cv_` (a stored value), and the
    choice and intervals come from it; cross_validate alone fits nothing."""
    fc = EnrollmentForecaster(["IN_MED"], model=FAST, device="cpu", min_train_years=11, n_jobs=1)
    cv = fc.cross_validate(census)
    assert not hasattr(fc, "models_") and not hasattr(fc, "cv_")
    fc.fit(census)
    assert fc.cv_ is fc.cv_  # stored, not recomputed on access
    assert fc.cv_.summary.equals(cv.summary)
    chosen = dict(fc.cv_.summary.filter(pl.col("Escolhido")).select("horizonte", "modelo").rows())
    assert sorted(chosen) == [1, 2, 3, 4]  # min_train_years=11: five years ahead never validated
    assert fc.chosen_["IN_MED"] == {**chosen, 5: chosen[4]}  # the table's choice, stored once; the last one carried to 5
    assert sorted(fc.calibration_["IN_MED"]["horizonte"].unique()) == [1, 2, 3, 4]
    before = {k: v for k, v in vars(fc).items()}
    fc.predict(census)
    assert vars(fc).keys() == before.keys() and all(vars(fc)[k] is v for k, v in before.items())  # predict changes nothing


def test_score_is_skill_against_persistence_on_unseen_years(census):
    """Fitted on 2011-2023, scored on 2024-2025: the hand-computed skill, and persistence scores 0."""
    seen, later = census.filter(pl.col("NU_ANO_CENSO") <= 2023), census.filter(pl.col("NU_ANO_CENSO") > 2023)
    fc = EnrollmentForecaster(["IN_FUND_AI"], horizons=2, model=FAST, device="cpu", min_train_years=9, n_jobs=1).fit(seen)
    schools = fc.predict(seen)
    panel = build_panel(later)
    truth = panel.select("CO_ENTIDADE", "NU_ANO_CENSO", pl.when(pl.col("active") & (pl.col("IN_FUND_AI") == 1))
                         .then(pl.col("QT_MAT_FUND_AI").fill_null(0)).otherwise(0).cast(pl.Float64).alias("truth"))
    joined = schools.join(truth, on=["CO_ENTIDADE", "NU_ANO_CENSO"], how="left").with_columns(pl.col("truth").fill_null(0.0))
    mae = (joined["previsao"] - joined["truth"]).abs().mean()
    persistence = (joined["matriculas_ultimo_ano"] - joined["truth"]).abs().mean()
    assert fc.score(seen, later) == pytest.approx(1 - mae / persistence)
    fc.models_["IN_FUND_AI"] = learners.by_horizon({h: learners.restore_baseline("Persistencia") for h in (1, 2)})
    assert fc.score(seen, later) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="none of the forecast years"):
        fc.score(seen, seen)
    assert np.isfinite(fc.score(seen, census))  # the later years may come with the earlier ones
