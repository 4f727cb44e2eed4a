"""DAG integrity: every DAG file imports cleanly and cheaply, and follows the house rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = [
    "pandas",
    "pyarrow",
    "duckdb",
    "sklearn",
    "xgboost",
    "great_expectations",
    "evidently",
    "sagemaker",
    "mlflow",
    "shap",
    "pyiceberg",
    "numpy",
    "sqlglot",
    "boto3",
]

# the DAG files of the patterns (one per pattern, each loading every use case)
PATTERN_FILES = ("lakehouse.py", "features.py", "training.py", "scoring.py")

PARSE = r"""
import json, sys, warnings
base = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
after_airflow = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
heavy = json.loads(sys.argv[2])
loaded = sorted(h for h in heavy if h in sys.modules and h not in after_airflow)
print(json.dumps({"dags": sorted(bag.dags), "errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "warnings": {k: list(v) for k, v in bag.captured_warnings.items()}, "heavy": loaded}))
"""


def parse(dag_folder: Path, env: dict[str, str] | None = None) -> dict:
    """Parse a DAG folder in a fresh interpreter (sys.modules must start clean)."""
    out = subprocess.run(
        [sys.executable, "-c", PARSE, str(dag_folder), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed() -> dict:
    return parse(ROOT / "dags")


def test_dags_import_without_errors(parsed):
    assert parsed["errors"] == {}  # usecase_errors.py included: every shipped use case loads
    assert "fraud_detection__lakehouse" in parsed["dags"]


def test_parsing_imports_no_heavy_library(parsed):
    assert parsed["heavy"] == [], f"imported at parse time: {parsed['heavy']}"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_house_rules(dagbag):
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable
    from airflow.timetables.interval import CronDataIntervalTimetable

    from mlblueprints.config import load_usecase

    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        uc = load_usecase(ROOT / "dags" / "usecases" / f"{dag_id.split('__')[0]}.yaml")
        assert "mlblueprints" in dag.tags and dag_id.split("__")[0] in dag.tags, dag_id
        # catch-up only where the use case asks for it (the lakehouse's intervals); never on Assets
        assert dag.catchup is (uc.catchup if dag_id.endswith("__lakehouse") else False), dag_id
        assert dag.start_date is not None and dag.start_date.tzinfo is not None
        assert dag.max_active_runs == 1
        if dag_id.endswith("__lakehouse"):
            assert isinstance(dag.timetable, CronDataIntervalTimetable)
        else:  # the downstream patterns run when their input Assets are updated
            assert isinstance(dag.timetable, AssetTriggeredTimetable), dag_id
        assert dag.params, "run-time knobs are Params"
        for t in dag.tasks:
            if t.task_id == "report":
                assert t.retries == 0 and t.trigger_rule == "all_done"
                continue
            assert t.retries >= 2, f"{dag_id}.{t.task_id} retries={t.retries}"
            assert t.retry_delay >= timedelta(seconds=1)


def test_lakehouse_topology_and_assets(dagbag):
    dag = dagbag.dags["fraud_detection__lakehouse"]
    t = dag.task_dict
    # compaction takes every writing step's result (the partitions to rewrite)
    assert t["ingest__transactions"].downstream_task_ids == {"gate_bronze__transactions", "reconcile", "compact"}
    # the tables are created once, before anything writes
    assert {f"ingest__{ds}" for ds in ("transactions", "customers", "merchants")} <= t["tables"].downstream_task_ids
    assert "silver__transactions" in t["gate_bronze__transactions"].downstream_task_ids
    assert t["gold__transaction_features"].upstream_task_ids >= {"gate_silver__transactions", "silver__transactions"}
    outlets = {task_id: [a.name for a in task.outlets] for task_id, task in t.items() if task.outlets}
    assert outlets["gate_gold__transaction_features"] == ["fraud_detection.transaction_features"]
    assert outlets["gate_silver__transactions"] == ["fraud_detection.transactions_silver"]
    assert outlets["gate_bronze__transactions"] == ["fraud_detection.transactions_bronze"]
    # outlets only on gates: an Asset event means the data passed its checks
    assert all(k.startswith("gate_") for k in outlets)


def test_features_topology_schedule_and_assets(dagbag):
    dag = dagbag.dags["fraud_detection__features"]
    t = dag.task_dict
    assert set(t) == {"plan", "materialize__card_activity", "materialize__merchant_activity", "report"}
    assert t["plan"].downstream_task_ids == {"materialize__card_activity", "materialize__merchant_activity"}
    # scheduled on the Gold Asset the lakehouse DAG's Gold gate emits
    gold_outlets = dagbag.dags["fraud_detection__lakehouse"].task_dict["gate_gold__transaction_features"].outlets
    assert dag.timetable.asset_condition.uri == gold_outlets[0].uri and len(gold_outlets) == 1
    outlets = {task_id: [a.name for a in task.outlets] for task_id, task in t.items() if task.outlets}
    assert outlets == {
        "materialize__card_activity": ["fraud_detection.features.card_activity"],
        "materialize__merchant_activity": ["fraud_detection.features.merchant_activity"],
    }


def test_training_topology_and_schedule(dagbag):
    dag = dagbag.dags["fraud_detection__training"]
    t = dag.task_dict
    assert t["training_set"].downstream_task_ids == {"train", "register"}
    assert t["train"].downstream_task_ids == {"evaluate", "register"}
    assert t["evaluate"].downstream_task_ids == {"register"}
    # a registered challenger is announced by its own step (skipped when nothing was registered)
    assert t["register"].downstream_task_ids == {"publish"}
    assert [a.name for a in t["publish"].outlets] == ["fraud_detection.model.challenger"]
    # all feature views updated, or a drift alert
    cond = dag.timetable.asset_condition
    assert type(cond).__name__ == "AssetAny"
    parts = list(cond.objects)
    assert type(parts[0]).__name__ == "AssetAll"
    assert sorted(a.name for a in parts[0].objects) == [
        "fraud_detection.features.card_activity",
        "fraud_detection.features.merchant_activity",
    ]
    assert parts[1].name == "fraud_detection.drift_alert"
    assert dag.params["interrupt"]["signal"] is None


def test_scoring_topology_schedule_and_assets(dagbag):
    dag = dagbag.dags["fraud_detection__scoring"]
    t = dag.task_dict
    assert t["plan"].downstream_task_ids == {"score", "gate", "commit"}
    assert t["score"].downstream_task_ids == {"gate", "commit"}
    assert t["gate"].downstream_task_ids == {"commit"}
    assert t["commit"].downstream_task_ids == {"report"}
    # predictions become visible only after the gate passed, with one Asset event
    assert [a.name for a in t["commit"].outlets] == ["fraud_detection.predictions"]
    assert all(not task.outlets for tid, task in t.items() if tid != "commit")
    # all the feature views of the scoring rows updated (the interval's features are complete)
    cond = dag.timetable.asset_condition
    assert type(cond).__name__ == "AssetAll"
    assert sorted(a.name for a in cond.objects) == [
        "fraud_detection.features.card_activity",
        "fraud_detection.features.merchant_activity",
    ]
    assert dag.params["version"] == 0 and dag.params["event_dates"] == []


def test_broken_usecase_is_one_line_and_others_load(tmp_path):
    uc_dir = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    (uc_dir / "claims.yaml").write_text("name: claims\nstart_date: 2024-01-01\ndatasets: {}\n")
    got = parse(ROOT / "dags", {"MLB_USECASES_DIR": str(uc_dir)})
    # Airflow's import errors show the broken use case - as an error of usecase_errors.py alone,
    # one line per problem, so the pattern DAG files keep loading the other use cases
    [(path, error)] = got["errors"].items()
    assert path.endswith("usecase_errors.py")
    assert f"{uc_dir / 'claims.yaml'}: datasets: " in error and "at least 1 item" in error
    assert "fraud_detection__lakehouse" in got["dags"]
    assert not any(d.startswith("claims") for d in got["dags"])
    assert "fraud_detection__features" in got["dags"]
    # each DAG file that loads use cases reports the bad one once, as one line
    for dag_file in PATTERN_FILES:
        msgs = [m for f, ws in got["warnings"].items() if f.endswith(dag_file) for m in ws if "claims.yaml" in m]
        assert len(msgs) == 1, (dag_file, got["warnings"])
        assert f"{uc_dir / 'claims.yaml'}: datasets: " in msgs[0] and "at least 1 item" in msgs[0]


def test_airflow_is_imported_only_in_mlblueprints_airflow():
    pkg = ROOT / "include" / "mlblueprints"
    offenders = []
    for p in pkg.rglob("*.py"):
        if pkg / "airflow" in p.parents:
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("import airflow", "from airflow")):
                offenders.append(f"{p.relative_to(ROOT)}:{n}: {s}")
    assert offenders == []


def test_dag_files_are_configuration_only():
    for p in (ROOT / "dags").glob("*.py"):
        code = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(code) < 25, f"{p.name} has logic; move it to mlblueprints.airflow"
        assert "def " not in p.read_text() and "@task" not in p.read_text(), p.name


@pytest.mark.parametrize(
    "content",
    [
        "name: claims\nstart_date: 2024-01-01\n".encode("utf-16"),  # a UTF-16 YAML
        ("claims: " + "[" * 50_000 + "]" * 50_000 + "\n").encode(),  # nested too deeply
        bytes(range(256)),  # binary
    ],
    ids=["utf16", "deeply-nested", "binary"],
)
def test_an_unreadable_usecase_removes_only_itself(tmp_path, content):
    """One UTF-16 or deeply nested YAML used to remove every DAG of every use case (import errors
    on all DAG files); now it is that file's one line and the other use cases load."""
    uc_dir = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    (uc_dir / "claims.yaml").write_bytes(content)
    got = parse(ROOT / "dags", {"MLB_USECASES_DIR": str(uc_dir)})
    assert {f"fraud_detection__{p.removesuffix('.py')}" for p in PATTERN_FILES} <= set(got["dags"])
    assert not any(str(ROOT / "dags") in f and "fraud_detection" in e for f, e in got["errors"].items())
    warned = [m for ws in got["warnings"].values() for m in ws if str(uc_dir / "claims.yaml") in m]
    pattern_files = [p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith(("_", "usecase_"))]
    assert len(warned) == len(pattern_files) and all(m.strip().count("\n") == 0 for m in warned), got["warnings"]
    # and once among the import errors, from usecase_errors.py, as a line of its own
    [(path, error)] = got["errors"].items()
    assert path.endswith("usecase_errors.py")
    [line] = [ln for ln in error.splitlines() if str(uc_dir / "claims.yaml") in ln]
    assert line.startswith(f"{uc_dir / 'claims.yaml'}: <file>: "), line


WATCHERS = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
after_airflow = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
heavy = [h for h in json.loads(sys.argv[2]) if h in sys.modules and h not in after_airflow]

def watchers(node):
    if isinstance(node, dict):
        if node.get("name") == "fraud_detection.drift_alert" and "uri" in node:
            return node.get("watchers", [])
        return next((w for w in map(watchers, node.values()) if w is not None), None)
    if isinstance(node, list):
        return next((w for w in map(watchers, node) if w is not None), None)
    return None

dag = bag.dags["fraud_detection__training"]
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy": heavy,
                  "watchers": watchers(DagSerialization.to_dict(dag)["dag"]["timetable"]) or []}))
"""


@pytest.mark.parametrize("target", ["local", "aws"])
def test_the_drift_alert_asset_watches_the_alert_queue_on_aws(tmp_path, target):
    """With a monitoring section, the training DAG's drift_alert Asset carries an AssetWatcher on
    the drift queue on aws (as the DAG processor serializes it: the Amazon provider's SQS trigger on
    the queue's URL), and none on local. Parsing on aws imports no heavy library the aws DAGs did
    not import before (boto3 through the provider's hooks, sqlglot through the Athena builders)."""
    import yaml

    uc_dir = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    path = uc_dir / "fraud_detection.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(target=target, monitoring={"alert": {"consecutive": 2}})
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-c", WATCHERS, str(ROOT / "dags"), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLB_USECASES_DIR": str(uc_dir)},
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors"] == {}
    if target == "local":
        assert got["watchers"] == [] and got["heavy"] == []
        return
    assert set(got["heavy"]) <= {"boto3", "sqlglot"}, got["heavy"]
    [w] = got["watchers"]
    assert w["name"] == "mlb-fraud-detection-drift-alerts"
    assert w["trigger"]["classpath"] == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
    kwargs = json.dumps(w["trigger"]["kwargs"])
    assert "https://sqs.eu-west-1.amazonaws.com/123456789012/mlb-fraud-detection-drift-alerts" in kwargs
