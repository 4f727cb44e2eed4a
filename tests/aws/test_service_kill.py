"""A killed service task stops its job: an Athena statement, a SageMaker training job.

Airflow stops a running task with SIGTERM, and the task runner's handler calls the operator's
``on_kill``; a task killed while deferred (cleared, marked failed or succeeded) has its trigger's
``on_kill`` called by the triggerer. Both are exercised here under moto, with the job kept
running (moto would finish it at once): the query or job must end CANCELLED / Stopped, and the
task must not report success.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import boto3
import pytest
from moto_world import REGION

from mlblueprints.core.service import Statement

pytestmark = [pytest.mark.aws]

moto = pytest.importorskip("moto")
from moto.sagemaker import models as sm_models  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402

BUCKET = "mlb-test-kill"


def _context(task_id: str, try_number: int = 1, run_id: str = "manual__2024-03-01T00:00:00+00:00") -> dict:
    return {"run_id": run_id, "ti": SimpleNamespace(task_id=task_id, try_number=try_number)}


@pytest.fixture
def running_queries(moto_world):
    """moto's Athena, with every query left running until it is stopped."""
    from moto.moto_api import state_manager

    moto_world.bucket(BUCKET)
    moto_world.workgroup(BUCKET)
    state_manager.set_transition(model_name="athena::execution", transition={"progression": "manual", "times": 10**9})
    try:
        yield boto3.client("athena", region_name=REGION)
    finally:
        state_manager.unset_transition("athena::execution")


def _athena_operator(deferrable: bool):
    from mlblueprints.airflow.operators import AthenaStatementsOperator

    return AthenaStatementsOperator(
        task_id="silver__x.athena",
        statements=[
            Statement("first", "SELECT 1", "select").as_dict(),
            Statement("second", "SELECT 2", "select").as_dict(),
        ],
        database="db",
        workgroup="mlblueprints",
        result_configuration={"OutputLocation": f"s3://{BUCKET}/athena/"},
        sleep_time=0,
        deferrable=deferrable,
        aws_conn_id="aws_default",
        region_name=REGION,
    )


def _states(athena) -> list[str]:
    ids = athena.list_query_executions()["QueryExecutionIds"]
    return [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Status"]["State"] for i in ids]


def test_killed_athena_task_stops_its_running_query(running_queries):
    from airflow.sdk.exceptions import AirflowException

    op = _athena_operator(deferrable=False)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(_context(op.task_id))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while op.query_execution_id is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _states(running_queries) in (["QUEUED"], ["RUNNING"]), "the first statement runs (and keeps running)"
    op.on_kill()  # what the task runner does on SIGTERM
    worker.join(30)
    assert not worker.is_alive()
    assert _states(running_queries) == ["CANCELLED"], "stopped, and the second statement never started"
    assert failure and isinstance(failure[0], AirflowException) and "CANCELLED" in str(failure[0])


def test_killed_deferred_athena_task_stops_its_query_from_the_trigger(running_queries):
    from airflow.sdk.exceptions import TaskDeferred

    from mlblueprints.airflow.operators import StatementTrigger

    op = _athena_operator(deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context(op.task_id))
    trigger = deferred.value.trigger
    assert isinstance(trigger, StatementTrigger) and deferred.value.method_name == "resume_statements"
    # the trigger survives serialization (the triggerer rebuilds it from its kwargs)
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlblueprints.airflow.operators.StatementTrigger" and kwargs["name"] == "first"
    rebuilt = StatementTrigger(**kwargs)
    asyncio.run(rebuilt.on_kill())  # what the triggerer does when the deferred task is killed
    assert _states(running_queries) == ["CANCELLED"]


def test_resumed_athena_task_runs_the_remaining_statements_in_order(moto_world):
    """Deferral between statements: the event says which statement finished, the task goes on
    with the next one, and the output names every statement's query."""
    from airflow.sdk.exceptions import TaskDeferred

    moto_world.bucket(BUCKET)
    moto_world.workgroup(BUCKET)
    op = _athena_operator(deferrable=True)
    ctx = _context(op.task_id)
    with pytest.raises(TaskDeferred) as first:
        op.execute(ctx)
    v1 = first.value.trigger.return_value
    with pytest.raises(TaskDeferred) as second:
        op.resume_statements(ctx, {"status": "success", "value": v1})
    v2 = second.value.trigger.return_value
    assert v2["name"] == "second" and v2["done"] == {"first": v1["query_execution_id"]}
    out = op.resume_statements(ctx, {"status": "success", "value": v2})
    assert out == {"queries": {"first": v1["query_execution_id"], "second": v2["query_execution_id"]}}
    athena = boto3.client("athena", region_name=REGION)
    queries = {
        athena.get_query_execution(QueryExecutionId=q)["QueryExecution"]["Query"] for q in out["queries"].values()
    }
    assert queries == {"SELECT 1", "SELECT 2"}


def test_resumed_athena_task_runs_chunks_and_repeats_what_athena_asks_for(moto_world, monkeypatch):
    """A chunked statement runs once per row of its plan, after the plan; a statement Athena ends
    with "more runs needed" runs again (deferred each time); killed while deferred on a chunk,
    the task stops that chunk's query."""
    from airflow.exceptions import TaskDeferred
    from moto_world import AthenaTwin

    from mlblueprints.airflow.operators import AthenaStatementsOperator, StatementTrigger
    from mlblueprints.core.service import placeholder

    moto_world.bucket(BUCKET)
    moto_world.workgroup(BUCKET)
    twin = AthenaTwin("db", moto_world.tmp).install(monkeypatch)
    twin._create_iceberg("t", [("d", "date"), ("x", "bigint")], [("d", "identity")])
    twin.more_runs[("optimize", "t")] = 2
    q = "'"
    plan = (
        f"SELECT 'k' AS kind, 1 AS chunk, 'DATE {q * 2}2024-01-03{q * 2}' AS dates UNION ALL "
        f"SELECT 'k' AS kind, 0 AS chunk, 'DATE {q * 2}2024-01-01{q * 2}, DATE {q * 2}2024-01-02{q * 2}' AS dates"
    )
    op = AthenaStatementsOperator(
        task_id="silver__x.athena",
        statements=[
            Statement("plan", plan, "select", fetch=True).as_dict(),
            Statement(
                "write",
                f"SELECT count(*) FROM db.t WHERE d IN ({placeholder('dates')})",
                "select",
                each={"plan": "plan", "kind": "k"},
            ).as_dict(),
            Statement(
                "optimize",
                "OPTIMIZE db.t REWRITE DATA USING BIN_PACK",
                "optimize",
                repeat_on="ICEBERG_OPTIMIZE_MORE_RUNS_NEEDED",
                max_runs=3,
            ).as_dict(),
        ],
        database="db",
        workgroup="mlblueprints",
        result_configuration={"OutputLocation": f"s3://{BUCKET}/athena/"},
        sleep_time=0,
        deferrable=True,
        aws_conn_id="aws_default",
        region_name=REGION,
    )
    ctx = _context(op.task_id)
    events, names, kwargs = [], [], {}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    trigger = deferred.value.trigger
    while True:
        value = trigger.return_value
        names.append((value["name"], value["runs"]))
        if value["name"] == "write__001":
            _, kwargs = trigger.serialize()
            assert kwargs["name"] == "write__001" and kwargs["done"]["write__000"]
        failed = twin.failures.get(value["query_execution_id"])
        event = (
            {"status": "error", "message": failed, "value": value} if failed else {"status": "success", "value": value}
        )
        events.append(event)
        try:
            out = op.resume_statements(ctx, event)
            break
        except TaskDeferred as again:
            trigger = again.trigger
    assert names == [
        ("plan", 1),
        ("write__000", 1),
        ("write__001", 1),
        ("optimize", 1),
        ("optimize", 2),
        ("optimize", 3),
    ]
    assert list(out["queries"]) == ["plan", "write__000", "write__001", "optimize"]
    chunked = [e["query"] for e in twin.executions if "count(*) FROM db.t" in e["query"]]
    assert chunked == [
        "SELECT count(*) FROM db.t WHERE d IN (DATE '2024-01-01', DATE '2024-01-02')",
        "SELECT count(*) FROM db.t WHERE d IN (DATE '2024-01-03')",
    ]
    # each run of a repeated statement is a query of its own
    assert len({e["id"] for e in twin.executions if e["query"].startswith("OPTIMIZE")}) == 3
    # the trigger of a chunk stops that chunk's query when the deferred task is killed
    athena = boto3.client("athena", region_name=REGION)
    qid = next(e["value"]["query_execution_id"] for e in events if e["value"]["name"] == "write__001")
    asyncio.run(StatementTrigger(**kwargs).on_kill())
    assert athena.get_query_execution(QueryExecutionId=qid)["QueryExecution"]["Status"]["State"] == "CANCELLED"
    # Athena still asking for more runs after max_runs: the task fails, saying so
    twin.more_runs[("optimize", "t")] = 5
    op.statements = op.statements[-1:]
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    trigger = deferred.value.trigger
    with pytest.raises(Exception, match=r"MORE_RUNS_NEEDED.*still after 3 run"):
        for _ in range(5):
            try:
                op.resume_statements(ctx, {"status": "error", "value": trigger.return_value})
            except TaskDeferred as again:
                trigger = again.trigger


@pytest.fixture
def running_jobs(moto_world, monkeypatch):
    """moto's SageMaker with training jobs left InProgress, and StopTrainingJob (which moto does
    not implement) stopping them."""
    original = sm_models.SageMakerModelBackend.create_training_job

    def create_training_job(self, *args, **kwargs):
        job = original(self, *args, **kwargs)
        job.training_job_status = job.secondary_status = "InProgress"
        return job

    def stop_training_job(self):
        name = self._get_param("TrainingJobName")
        job = self.sagemaker_backend.training_jobs[name]
        if job.training_job_status != "InProgress":
            from moto.sagemaker.exceptions import ValidationError

            raise ValidationError(f"The training job {name} is not in progress")
        job.training_job_status = job.secondary_status = "Stopped"
        return "{}"

    monkeypatch.setattr(sm_models.SageMakerModelBackend, "create_training_job", create_training_job)
    monkeypatch.setattr(SageMakerResponse, "stop_training_job", stop_training_job, raising=False)
    moto_world.bucket(BUCKET)
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=BUCKET, Key="training/data/train/train.parquet", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="training/source/sourcedir.tar.gz", Body=b"x")
    return boto3.client("sagemaker", region_name=REGION)


def _training_operator(deferrable: bool):
    import yaml

    from helpers import ROOT
    from mlblueprints.airflow.operators import TrainingJobOperator
    from mlblueprints.aws import training as tr
    from mlblueprints.config import parse_usecase

    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data.update(name="fraud_kill", target="aws")
    data["aws"].update(region=REGION, bucket=BUCKET, prefix="")
    data["gold"]["transaction_features"]["sql"] = str(
        ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
    )
    uc = parse_usecase(data)
    request = tr.create_training_job_request(
        uc,
        job_name=tr.training_job_name(uc, "r", 1),
        train_s3_uri=f"s3://{BUCKET}/training/data/train/",
        source_s3_uri=f"s3://{BUCKET}/training/source/sourcedir.tar.gz",
        output_s3_uri=f"s3://{BUCKET}/training/output",
        checkpoint_s3_uri=f"s3://{BUCKET}/training/checkpoints/r/",
        hyperparameters={"num_boost_round": 3},
        git_commit="abc",
    )
    op = TrainingJobOperator(
        task_id="train.sagemaker_training",
        usecase=uc,
        config=request,
        deferrable=deferrable,
        check_interval=0,
        print_log=False,
        aws_conn_id="aws_default",
        region_name=REGION,
    )
    return op, uc


def test_killed_training_task_stops_its_job(running_jobs):
    from mlblueprints.aws import training as tr

    op, uc = _training_operator(deferrable=False)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(_context(op.task_id, run_id="r"))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    name = tr.training_job_name(uc, "r", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if running_jobs.list_training_jobs()["TrainingJobSummaries"]:
            break
        time.sleep(0.05)
    assert running_jobs.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"
    op.on_kill()
    worker.join(30)
    assert not worker.is_alive()
    assert running_jobs.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped"
    assert failure, "a stopped job is not a success"


def test_killed_deferred_training_task_stops_its_job_from_the_trigger(running_jobs):
    from airflow.sdk.exceptions import TaskDeferred

    from mlblueprints.airflow.operators import StoppingSageMakerTrigger
    from mlblueprints.aws import training as tr

    op, uc = _training_operator(deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context(op.task_id, try_number=2, run_id="r"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, StoppingSageMakerTrigger)
    name = tr.training_job_name(uc, "r", 2)  # this try's own job
    assert trigger.job_name == name
    # long enough for the whole Spot wait, not the provider's default 60 polls
    stop = op.config["StoppingCondition"]
    assert trigger.attempts >= stop["MaxWaitTimeInSeconds"] // max(1, op.check_interval)
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlblueprints.airflow.operators.StoppingSageMakerTrigger"
    asyncio.run(StoppingSageMakerTrigger(**kwargs).on_kill())
    assert running_jobs.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped"
