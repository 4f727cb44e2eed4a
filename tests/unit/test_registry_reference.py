"""The gate's reference model: the champion, else the newest registered version (MLflow on SQLite)."""

from __future__ import annotations

import pytest

from helpers import fraud_usecase
from mlblueprints.registry.reference import ReferenceModel, reference_model


@pytest.fixture
def registry(mlb_home):
    """The use case's own MLflow registry under a fresh runtime directory, with three versions
    (the third registered by the Airflow run ``run-c``), none of them champion."""
    from mlblueprints.registry import local

    uc = fraud_usecase()
    c = local.client(uc)
    c.create_registered_model(uc.model_name)
    for run in ("run-a", "run-b", "run-c"):
        c.create_model_version(uc.model_name, source=(mlb_home / run).as_uri(), tags={"mlb.run_id": run})
    return uc, c


def test_nothing_registered_means_no_reference(mlb_home):
    uc = fraud_usecase()
    assert reference_model(uc) is None


def test_no_champion_means_the_newest_registered_version(registry):
    uc, c = registry
    ref = reference_model(uc)
    assert ref == ReferenceModel(uc.model_name, 3, "newest", None)
    assert ref.label == "v3 (newest registered version; no champion)"
    assert ref.model_uri == f"models:/{uc.model_name}/3"
    # the same through a client and a model name
    assert reference_model(c, uc.model_name) == ref


def test_the_champion_wins_over_newer_versions(registry):
    uc, c = registry
    c.set_registered_model_alias(uc.model_name, "champion", "1")
    ref = reference_model(uc)
    assert (ref.version, ref.kind, ref.label) == (1, "champion", "champion v1")


def test_a_run_never_compares_with_its_own_registration(registry):
    uc, c = registry
    assert reference_model(uc, exclude_run_id="run-c").version == 2
    c.set_registered_model_alias(uc.model_name, "champion", "3")  # promote: true registered and promoted it
    ref = reference_model(uc, exclude_run_id="run-c")
    assert (ref.version, ref.kind) == (2, "newest")
    assert reference_model(uc, exclude_run_id="run-b").kind == "champion"


def test_many_versions_page_through(registry):
    uc, c = registry
    for i in range(120):
        c.create_model_version(uc.model_name, source=f"file:///nowhere/{i}", tags={"mlb.run_id": f"bulk-{i}"})
    assert reference_model(uc).version == 123
    assert reference_model(uc, exclude_run_id="bulk-119").version == 122


def test_a_client_needs_the_model_name(registry):
    _, c = registry
    with pytest.raises(TypeError, match="give the registered model's name"):
        reference_model(c)


def test_the_reference_booster_loads_from_the_use_cases_registry(mlb_home):
    import mlflow
    import mlflow.xgboost
    import numpy as np
    import xgboost as xgb

    from mlblueprints.registry import local
    from mlblueprints.registry.reference import load_reference_booster

    uc = fraud_usecase()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "seed": 0}, xgb.DMatrix(x, label=y), num_boost_round=5)
    c = local.client(uc)
    exp = c.create_experiment("reference", artifact_location=(mlb_home / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.xgboost.log_model(booster, name="model", model_format="ubj")
    mlflow.register_model(info.model_uri, uc.model_name)
    ref = reference_model(uc)
    assert ref is not None and ref.kind == "newest"
    loaded = load_reference_booster(uc, ref)
    np.testing.assert_array_equal(loaded.predict(xgb.DMatrix(x)), booster.predict(xgb.DMatrix(x)))
