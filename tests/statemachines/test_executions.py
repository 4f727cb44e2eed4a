"""Each pattern's control flow, executed by moto's ASL interpreter with the service jobs and the
worker answered by stubs (see sfn_harness.py): success, a failed gate ending in its Fail state, a
Spot or transform capacity error retried with a new job, a worker error retried; and the parameter
blocks the interpreter evaluated, compared with what the pure builders (and so the Airflow tasks)
send."""

from __future__ import annotations

import copy
import json
import re

import pytest
from sfn_harness import Call, fraud_usecase_for_tests

from helpers import clarify_analysis, register_explainable_version
from mlblueprints import patterns
from mlblueprints.aws import requests as req
from mlblueprints.aws import scoring as sr
from mlblueprints.aws import training as tr
from mlblueprints.core import service
from mlblueprints.core.service import Statement
from mlblueprints.lineage import RunInfo
from mlblueprints.stepfunctions import names, worker
from mlblueprints.training.core import hyperparameters

pytestmark = pytest.mark.aws

STATEMENTS = [
    Statement("merge", "MERGE INTO t USING s ON t.k = s.k WHEN MATCHED THEN DELETE", "merge"),
    Statement("count", "SELECT 1", "select", fetch=True),
]


def _athena_prepare(statements):
    """A prepare phase's outcome handing Athena statements over, with the call it writes."""
    call = service.athena(statements, "lakehouse", "resume_silver")
    return {**worker.service_outcome(call), "call": call.as_dict()}


def _events(uc, pattern, step_id):
    spec = patterns.declare(pattern, names.on_aws(uc))
    return [
        {"Source": "mlblueprints", "DetailType": "mlblueprints asset updated", "Detail": json.dumps({"asset": a})}
        for a in spec.step(step_id).emits
    ]


def _service_answers(uc, pattern, execution_ref, training_request=None, transform_request=None):
    """Default answers: a service step's prepare phase hands the job's request over; every other
    phase succeeds with its Asset events."""
    spec = patterns.declare(pattern, names.on_aws(uc))
    answers = {}
    for s in spec.steps:

        def done(call, n, sid=s.id):
            return {"status": "succeeded", "events": _events(uc, pattern, sid)}

        if s.service == "athena":
            answers[(s.id, "prepare")] = lambda call, n: _athena_prepare(STATEMENTS)
        elif s.service == "sagemaker_training":
            answers[(s.id, "prepare")] = lambda call, n: {
                "status": "service",
                "kind": "sagemaker_training",
                "request": training_request(execution_ref()),
            }
        elif s.service == "sagemaker_transform":
            answers[(s.id, "prepare")] = lambda call, n: worker.service_outcome(
                service.ServiceCall("sagemaker_transform", transform_request(execution_ref()), "scorer", "resume_score")
            )
        answers[(s.id, "finish")] = done
        answers[(s.id, "run")] = done
    return answers


def _training_request(uc, execution):
    """What AwsTrainer.train builds for this execution (the worker's run: run id = execution)."""
    run = RunInfo.for_usecase(uc, run_id=execution, dag_id="fraud_detection__training", task_id="train.prepare")
    aws = uc.aws_settings
    return tr.create_training_job_request(
        uc,
        job_name=tr.training_job_name(uc, run.run_id, 1),
        train_s3_uri=aws.s3_uri("training", "data", execution, "abc", "train") + "/",
        source_s3_uri=f"s3://{aws.bucket}/{tr.source_archive_key(uc, 'a' * 64)}",
        output_s3_uri=tr.output_s3_uri(uc),
        checkpoint_s3_uri=tr.checkpoint_s3_uri(uc, f"{execution}#abc"),
        hyperparameters=hyperparameters(uc),
        git_commit="0123abc",
        run=run.as_dict(),
    )


@pytest.mark.slow
def test_training_succeeds_after_a_spot_capacity_error_with_a_new_job_and_the_builders_request(sfn_world):
    uc = fraud_usecase_for_tests()
    holder = {}
    answers = _service_answers(uc, "training", lambda: holder["execution"], lambda e: _training_request(uc, e))
    prepare = answers[("training_set", "prepare")]

    def remember(call: Call, n):
        holder["execution"] = call.parameters["AppSpecification"]["ContainerArguments"][5]
        return prepare(call, n)

    answers[("training_set", "prepare")] = remember

    def training(call: Call, n):
        if n == 1:  # the job ended Failed: .sync raises States.TaskFailed, which SendTaskFailure
            # may not name (moto refuses States.*): a task error of another name, which the
            # retrier's States.TaskFailed matches as in AWS
            return (
                "fail",
                "SageMaker.TrainingJobFailed",
                json.dumps({"FailureReason": "CapacityError: Unable to provision requested ML compute capacity."}),
            )
        return None

    answers["training"] = training
    ex = sfn_world.execute(uc, "training", answers)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    jobs = [c for c in ex.services.calls if "createTrainingJob" in c.resource]
    # a new job per retry (moto 5.2.5 hands the first retry after a SendTaskFailure the same
    # failure once more, so there are two retries here, where AWS would need one)
    assert [c.retry for c in jobs] == list(range(len(jobs))) and 2 <= len(jobs) <= 1 + uc.retries
    names_ = [c.parameters["TrainingJobName"] for c in jobs]
    assert len(set(names_)) == len(jobs) and all(tr.SAGEMAKER_NAME_RE.match(n) for n in names_), names_
    # the block the state machine sent is the builder's request for this try, apart from the
    # try-number tag, which says the try of the prepare phase (the retry count is in the name)
    prepared = _training_request(uc, holder["execution"])

    def tags_by_key(request):
        return {**request, "Tags": sorted(request["Tags"], key=lambda t: t["Key"])}

    for c in jobs:
        want = tr.request_for_try(prepared, c.parameters["TrainingJobName"], 1)
        assert tags_by_key(c.parameters) == tags_by_key(want)
    # evaluate, register, publish, report all ran after the job
    assert ("report", "run") in ex.worker_calls() and ("publish", "run") in ex.worker_calls()


@pytest.mark.slow
def test_a_failed_gate_ends_the_lakehouse_in_its_fail_state_after_the_report(sfn_world):
    uc = fraud_usecase_for_tests()
    answers = _service_answers(uc, "lakehouse", lambda: None)
    answers[("gate_bronze__transactions", "finish")] = lambda call, n: {
        "status": "failed",
        "error": {"Error": "GateFailed", "Cause": "quality gate failed\nexpect_column_values_to_not_be_null: 3 rows"},
    }
    ex = sfn_world.execute(uc, "lakehouse", answers)
    assert ex.status == "FAILED"
    assert ex.error == "GateFailed" and ex.cause.startswith("quality gate failed")
    assert "Failed: gate_bronze__transactions" in ex.entered()
    ran = ex.worker_calls()
    # not retried (a permanent failure), nothing downstream of it ran, the other data sets did, the report did
    assert ran.count(("gate_bronze__transactions", "finish")) == 1
    assert not any(step in ("silver__transactions", "gold__transaction_features", "compact") for step, _ in ran)
    assert ("silver__customers", "finish") in ran and ("report", "run") in ran


@pytest.mark.slow
def test_lakehouse_succeeds_and_each_athena_block_is_the_builders(sfn_world):
    uc = fraud_usecase_for_tests()
    ex = sfn_world.execute(uc, "lakehouse", _service_answers(uc, "lakehouse", lambda: None))
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    queries = [c for c in ex.services.calls if "athena" in c.resource]
    spec = patterns.declare("lakehouse", names.on_aws(uc))
    assert len(queries) == len(STATEMENTS) * sum(1 for s in spec.steps if s.service == "athena")
    tokens = set()
    for c in queries:
        p = c.parameters
        assert p == req.athena_start_query(uc.aws_settings, p["QueryString"], p["ClientRequestToken"])
        assert re.fullmatch(r"[0-9a-f]{64}", p["ClientRequestToken"])
        tokens.add(p["ClientRequestToken"])
    assert len(tokens) == len(queries)  # one token per statement of each step
    # the statements of each step ran in order
    by_step = {}
    for c in queries:
        by_step.setdefault(c.state, []).append(c.parameters["QueryString"])
    assert len(by_step) == sum(1 for s in spec.steps if s.service == "athena")
    assert all(v == [s.sql for s in STATEMENTS] for v in by_step.values()), by_step


@pytest.mark.slow
def test_features_retry_a_failed_worker_job_with_a_new_job_and_try(sfn_world):
    uc = fraud_usecase_for_tests()
    answers = _service_answers(uc, "features", lambda: None)
    ok = answers[("plan", "run")]
    answers[("plan", "run")] = lambda call, n: (
        ("fail", "SageMaker.ProcessingJobFailed", "exit code 1") if n == 1 else ok(call, n)
    )
    ex = sfn_world.execute(uc, "features", answers)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    plans = [c for c in ex.services.calls if c.worker == ("plan", "run")]
    # each try is told its number and is a job of its own (see the training test on moto's retries)
    tries = [c.parameters["AppSpecification"]["ContainerArguments"][-1] for c in plans]
    assert tries == [str(k) for k in range(1, len(plans) + 1)] and len(plans) >= 2
    assert len({c.parameters["ProcessingJobName"] for c in plans}) == len(plans)
    for c in plans:
        assert tr.SAGEMAKER_NAME_RE.match(c.parameters["ProcessingJobName"])
    for view in uc.features:
        assert (f"materialize__{view}", "finish") in ex.worker_calls()


@pytest.mark.slow
def test_a_failed_training_set_skips_training_and_fails_the_execution_with_its_error(sfn_world):
    uc = fraud_usecase_for_tests(retries=2)
    answers = _service_answers(uc, "training", lambda: None, lambda e: {})
    answers[("training_set", "prepare")] = lambda call, n: ("fail", "SageMaker.ProcessingJobFailed", "worker exited 1")
    ex = sfn_world.execute(uc, "training", answers)
    assert ex.status == "FAILED" and "Failed: training_set" in ex.entered()
    assert ex.worker_calls().count(("training_set", "prepare")) == 3  # 1 + retries
    assert ("train", "prepare") not in ex.worker_calls() and ("report", "run") in ex.worker_calls()


def _transform_request(uc, execution):
    """What AwsScorer.score builds for this execution (the worker's run: run id = execution)."""
    run = RunInfo.for_usecase(uc, run_id=execution, dag_id="fraud_detection__scoring", task_id="score.prepare")
    aws = uc.aws_settings
    return sr.transform_request(
        uc,
        job_name=sr.transform_job_name(uc, run.run_id, 1),
        model_package_arn=f"arn:aws:sagemaker:eu-west-1:{aws.account_id}:model-package/fraud-detection/3",
        input_s3_uri=aws.s3_uri("_scoring", execution, "try-1") + "/input/",
        output_base_uri=aws.s3_uri("scoring", "output", execution),
        key_count=len(uc.scoring_rows()["keys"]),
        model={"task": uc.training.task, "name": uc.model_name, "version": 3},
        run=run.as_dict(),
        git_commit="0123abc",
    )


def _what_the_airflow_task_sends(uc, config, run_id):
    """CreateModel and CreateTransformJob as the Airflow aws task sends them: TransformJobOperator
    (the provider's SageMakerTransformOperator underneath) for try 1 of ``run_id``, its hook's
    client calls captured (no job of an earlier try to adopt)."""
    from unittest import mock

    from botocore.exceptions import ClientError

    from mlblueprints.airflow.builder import service_operator

    op = service_operator("sagemaker_transform", uc, task_id="score.sagemaker_transform", request=config)
    op.deferrable = False
    unknown = ClientError({"Error": {"Code": "ValidationException", "Message": "not found"}}, "Describe")
    sent = {}
    hook = mock.Mock()
    hook.describe_transform_job.side_effect = unknown
    hook.describe_model.side_effect = unknown
    hook.create_model.side_effect = lambda c: sent.update(Model=copy.deepcopy(c))
    hook.create_transform_job.side_effect = lambda c, **kw: (
        sent.update(Transform=copy.deepcopy(c)) or {"ResponseMetadata": {"HTTPStatusCode": 200}}
    )
    hook.configure_s3_resources.return_value = None
    op.__dict__["hook"] = hook
    ti = mock.Mock(try_number=1, task_id="score.sagemaker_transform")
    with pytest.raises(ClientError):  # after sending, the provider describes the job: our mock knows none
        op.execute({"run_id": run_id, "ti": ti})
    assert set(sent) == {"Model", "Transform"}, sent
    return sent


@pytest.mark.slow
def test_scoring_retries_a_transform_capacity_error_with_a_new_model_and_job_sending_the_airflow_tasks_blocks(
    sfn_world,
):
    """The transform job and CreateModel are answered by the harness's stubs (moto runs neither);
    the first job ends Failed with a capacity error, the retry makes a new model and job."""
    uc = fraud_usecase_for_tests()
    holder = {}
    answers = _service_answers(
        uc, "scoring", lambda: holder["execution"], transform_request=lambda e: _transform_request(uc, e)
    )
    prepare = answers[("score", "prepare")]

    def remember(call: Call, n):
        holder["execution"] = call.parameters["AppSpecification"]["ContainerArguments"][5]
        return prepare(call, n)

    answers[("score", "prepare")] = remember
    answers["transform"] = lambda call, n: (
        ("fail", "SageMaker.TransformJobFailed", "CapacityError: Unable to provision requested ML compute capacity.")
        if n == 1
        else None
    )
    ex = sfn_world.execute(uc, "scoring", answers)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    models = [c for c in ex.services.calls if c.kind == "model"]
    jobs = [c for c in ex.services.calls if c.kind == "transform"]
    # one model per try, named as its job; a new name per retry (moto may hand the failure to the
    # first retry once more, as in the training test)
    assert len(models) == len(jobs) and 2 <= len(jobs) <= 1 + uc.retries
    names_ = [c.parameters["TransformJobName"] for c in jobs]
    assert [c.parameters["ModelName"] for c in models] == names_ == [c.parameters["ModelName"] for c in jobs]
    assert len(set(names_)) == len(jobs) and all(tr.SAGEMAKER_NAME_RE.match(n) for n in names_), names_
    # each try's blocks are what the Airflow task sends for its try, renamed as the task renames a
    # try (the try-number tag says the prepare phase's try; the retry is in the name)
    sent = _what_the_airflow_task_sends(uc, _transform_request(uc, holder["execution"]), holder["execution"])

    def tags_by_key(request):  # request_for_try moves the try-number tag last
        return {**request, "Tags": sorted(request["Tags"], key=lambda t: t["Key"])}

    for model, job in zip(models, jobs):
        want = sr.request_for_try(sent, job.parameters["TransformJobName"], 1)
        assert tags_by_key(model.parameters) == tags_by_key(want["Model"])
        assert tags_by_key(job.parameters) == tags_by_key(want["Transform"])
        assert job.parameters["TransformOutput"]["S3OutputPath"].endswith(f"/{job.parameters['TransformJobName']}/")
    # the finish phase got the completed job as the operator's output, and the steps after ran
    out = json.loads(
        sfn_world.s3.get_object(
            Bucket=uc.aws_settings.bucket,
            Key=f"{ex.services.key_prefix()[1]}/{names.step_key('score', 'output')}",
        )["Body"].read()
    )
    assert out["how"] == "created" and out["Transform"]["TransformJobName"] == names_[-1]
    assert out["Model"]["ModelName"] == names_[-1]
    assert [w for w in ex.worker_calls() if w[1] != "prepare"] == [
        ("plan", "finish"),
        ("score", "finish"),
        ("gate", "run"),
        ("commit", "finish"),
        ("report", "run"),
    ]


@pytest.mark.slow
def test_a_failed_scoring_gate_ends_in_its_fail_state_without_committing(sfn_world):
    uc = fraud_usecase_for_tests()
    holder = {"execution": "x"}
    answers = _service_answers(
        uc, "scoring", lambda: holder["execution"], transform_request=lambda e: _transform_request(uc, e)
    )
    answers[("gate", "run")] = lambda call, n: {
        "status": "failed",
        "error": {"Error": "GateFailed", "Cause": "predictions gate failed\nscore in [0, 1]: 2 rows"},
    }
    ex = sfn_world.execute(uc, "scoring", answers)
    assert ex.status == "FAILED" and ex.error == "GateFailed" and ex.cause.startswith("predictions gate failed")
    assert "Failed: gate" in ex.entered()
    ran = ex.worker_calls()
    assert ran.count(("gate", "run")) == 1 and not [w for w in ran if w[0] == "commit"]
    assert ("score", "finish") in ran and ("report", "run") in ran


VIEW_RANGES = (("2024-03-01", "2024-03-03"), ("2024-03-02", "2024-03-05"))


@pytest.mark.slow
def test_a_feature_run_that_succeeded_starts_scoring_on_the_ranges_its_views_emitted(sfn_world):
    """The stack's FeaturesToScoringRule starts the scoring machine with the features execution's
    status event (scoring.schedule features: every view materialized). The worker's plan takes the
    ranges that execution's view events carried - read from its step outcomes on S3 - as an
    Airflow run scheduled on all the views gets them; the scoring plan scores their min..max."""
    from mlblueprints.core.naming import feature_view_asset
    from mlblueprints.scoring import core as scoring_core

    uc = fraud_usecase_for_tests()
    assert uc.scoring_schedule == "features" and len(uc.features) == len(VIEW_RANGES)
    answers = _service_answers(uc, "features", lambda: None)
    for view, rng in zip(uc.features, VIEW_RANGES):
        asset = feature_view_asset(names.on_aws(uc), view).name
        event = {
            "Source": "mlblueprints",
            "DetailType": "mlblueprints asset updated",
            "Detail": json.dumps({"asset": asset, "extra": {"range": list(rng), "view": view}}),
        }
        answers[(f"materialize__{view}", "finish")] = lambda call, n, e=event: {"status": "succeeded", "events": [e]}
    features = sfn_world.execute(uc, "features", answers)
    assert features.status == "SUCCEEDED", (features.error, features.cause)
    status_event = {
        "version": "0",
        "source": "aws.states",
        "detail-type": worker.STATUS_DETAIL_TYPE,
        "detail": {
            "executionArn": f"arn:aws:states:eu-west-1:{uc.aws_settings.account_id}:execution:x:{features.services.execution}",
            "stateMachineArn": f"arn:aws:states:eu-west-1:{uc.aws_settings.account_id}:stateMachine:"
            + names.state_machine_name(uc, "features"),
            "name": features.services.execution,
            "status": "SUCCEEDED",
        },
    }
    holder = {}
    scoring_answers = _service_answers(
        uc, "scoring", lambda: holder["execution"], transform_request=lambda e: _transform_request(uc, e)
    )
    prepare = scoring_answers[("plan", "prepare")]

    def plan(call: Call, n):  # the worker's view of the run, from what the machine recorded
        execution = call.parameters["AppSpecification"]["ContainerArguments"][5]
        holder["execution"] = execution
        aws_uc = names.on_aws(uc)
        spec = patterns.declare("scoring", aws_uc)
        store = worker.S3Store(sfn_world.s3, aws_uc, "scoring", execution)
        ctx = worker.step_context(aws_uc, spec, "plan", "prepare", store.get(names.RUN_DOCUMENT), 1, store)
        holder["triggering"] = ctx.triggering
        holder["interval"] = scoring_core.interval([], ctx.triggering_extras(), scheduled=False)
        return prepare(call, n)

    scoring_answers[("plan", "prepare")] = plan
    ex = sfn_world.execute(uc, "scoring", scoring_answers, execution_input=status_event)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert holder["triggering"] == {
        feature_view_asset(names.on_aws(uc), v).name: [{"range": list(r), "view": v}]
        for v, r in zip(uc.features, VIEW_RANGES)
    }
    lo, hi, source = holder["interval"]
    assert (lo.isoformat(), hi.isoformat(), source) == ("2024-03-01", "2024-03-05", "triggering Asset events")
    # a status event of another machine, or of a run that did not succeed, is refused with its name
    store = worker.S3Store(sfn_world.s3, names.on_aws(uc), "scoring", "x")
    for detail, says in (
        ({**status_event["detail"], "stateMachineArn": "arn:aws:states:eu-west-1:1:stateMachine:other"}, "other"),
        ({**status_event["detail"], "status": "FAILED"}, "FAILED"),
    ):
        with pytest.raises(worker.PermanentError, match=says):
            worker.upstream_events(names.on_aws(uc), detail, store)


# ---------------------------------------------------------------- monitoring

WINDOW = ("2024-03-07", "2024-03-07")


def _monitoring_statements(uc):
    """What AwsMonitor hands the state machine, built by the monitoring backend's pure SQL
    functions: ``measure`` UNLOADs the window's predictions of the version and the labels landed
    for them; ``decide`` MERGEs the window's metric rows and its decision, then maintains both
    tables (OPTIMIZE and VACUUM repeat on MORE_RUNS_NEEDED)."""
    from mlblueprints.lakehouse.aws import fq, maintenance_statements, unload_statement
    from mlblueprints.lakehouse.sqlgen import to_trino
    from mlblueprints.monitoring import aws as ma
    from mlblueprints.monitoring import core

    lo, hi = WINDOW
    rows = uc.scoring_rows()
    keys, table = rows["keys"], uc.scoring.output_table
    base = uc.aws_settings.s3_uri("_monitoring", "w1")
    label = uc.training_sets[rows["training_set"]].labels.label
    measure = [
        unload_statement(
            "monitoring_window",
            to_trino(ma.window_predictions_sql(fq(uc, table), keys, lo, hi, 3)),
            f"{base}/window/",
        ),
        unload_statement(
            "monitoring_labels",
            to_trino(ma.window_labels_sql(fq(uc, table), fq(uc, rows["source"]), keys, label, lo, hi, 3, True)),
            f"{base}/labels/",
        ),
    ]
    metrics_t, decisions_t = ma.history_tables(uc)
    ident_ = {"usecase": uc.name, "model_name": uc.model_name, "model_version": 3, "window_start": lo, "window_end": hi}
    staged = ma.staged_metrics_sql(fq(uc, "monitoring_stage_x"), core.TABLE_COLUMNS)
    decide = [
        Statement(
            "merge_monitoring",
            to_trino(ma.metrics_merge_sql(fq(uc, metrics_t), staged, core.TABLE_COLUMNS, ident_)),
            "merge",
        ),
        *maintenance_statements(uc, metrics_t, "window_end", [hi], uc.lakehouse.snapshot_retention_days),
        *maintenance_statements(uc, decisions_t, None, None, uc.lakehouse.snapshot_retention_days),
    ]
    return measure, decide


def _decision(uc, drifted: bool):
    """decide's result (policy.decide over an empty history, as ``_decided`` completes it)."""
    from mlblueprints.monitoring import policy

    m = uc.monitoring
    signals = {s: drifted for s in m.signals(uc.training.task)}
    d = policy.decide(
        {
            "window_start": WINDOW[0],
            "window_end": WINDOW[1],
            "rows": 5000,
            "signals": signals,
            "drifted_columns": ["amount", "card_amount_avg_7d"] if drifted else [],
        },
        [],
        signals=m.signals(uc.training.task),
        consecutive=1,
        cooldown_days=m.alert.cooldown_days,
        min_rows=m.alert.min_rows,
    ).as_dict()
    return {**d, "model_version": 3, "written": {}, "published": {}}


def _monitoring_answers(uc, tmp_path, drifted: bool):
    """Stubs for the worker's and Athena's jobs (moto runs neither); the ``alert`` phase is the real
    worker (``run_phase``) on the decision, so its Asset events are the ones the worker puts."""
    measure, decide = _monitoring_statements(uc)
    answers = _service_answers(uc, "monitoring", lambda: None)
    answers[("measure", "prepare")] = lambda call, n: _athena_call(measure, "resume_window")
    answers[("decide", "prepare")] = lambda call, n: _athena_call(decide, "resume_write")

    def alert(call: Call, n):
        args = call.parameters["AppSpecification"]["ContainerArguments"]
        store = worker.DirStore(tmp_path / f"alert-{n}")
        store.put(names.RUN_DOCUMENT, {"execution": args[5], "input": {}})
        store.put(names.step_key("decide", "result"), _decision(uc, drifted))
        return worker.run_phase(names.on_aws(uc), "monitoring", "alert", "run", store)

    answers[("alert", "run")] = alert
    return answers, measure + decide


def _athena_call(statements, resume):
    call = service.athena(statements, "monitor", resume, {})
    return {**worker.service_outcome(call), "call": call.as_dict()}


def _check_monitoring_queries(uc, ex, statements):
    """Each statement ran once, in order, with the builder's StartQueryExecution."""
    queries = [c for c in ex.services.calls if "athena" in c.resource]
    assert [c.parameters["QueryString"] for c in queries] == [s.sql for s in statements]
    for c in queries:
        p = c.parameters
        assert p == req.athena_start_query(uc.aws_settings, p["QueryString"], p["ClientRequestToken"])
    assert [c.state for c in queries] == ["measure.statement"] * 2 + ["decide.statement"] * (len(statements) - 2)


@pytest.mark.slow
def test_monitoring_without_drift_skips_the_alert_and_succeeds(sfn_world, tmp_path, monkeypatch):
    """Athena's queries and the worker's jobs are stubs (moto runs neither); the alert step is the
    real one, skipped on a decision that did not fire."""
    monkeypatch.setenv("MLB_HOME", str(tmp_path / "home"))
    uc = fraud_usecase_for_tests()
    answers, statements = _monitoring_answers(uc, tmp_path, drifted=False)
    ex = sfn_world.execute(uc, "monitoring", answers, params={"event_dates": list(WINDOW)})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    _check_monitoring_queries(uc, ex, statements)
    assert ex.worker_calls() == [
        ("plan", "run"),
        ("measure", "prepare"),
        ("measure", "finish"),
        ("decide", "prepare"),
        ("decide", "finish"),
        ("alert", "run"),
        ("report", "run"),
    ]
    entered = ex.entered()
    assert "alert: skipped" in entered and "alert.events" not in entered


@pytest.mark.slow
def test_monitoring_with_drift_puts_the_alert_that_the_drift_rule_sends_to_retraining(sfn_world, tmp_path, monkeypatch):
    """A decision that fired: the real alert step's drift_alert event goes out from the state
    machine (events:putEvents, run by moto), matches the drift rule that monitoring's publish makes
    (``ensure_alerting``, the stack's rule: its other target is the training state machine) and
    lands in the drift queue; a training execution started with that event sees the alert as its
    triggering event. The rule's training target is not run here: moto's EventBridge does not start
    state machines (tests/infra checks the stack's rule has it)."""
    import boto3

    from mlblueprints.core.naming import drift_alert_asset
    from mlblueprints.monitoring import aws as ma

    monkeypatch.setenv("MLB_HOME", str(tmp_path / "home"))
    uc = fraud_usecase_for_tests()
    region = uc.aws_settings.region
    clients = {s: boto3.client(s, region_name=region) for s in ("cloudwatch", "events", "sqs")}
    made = ma.ensure_alerting(uc, clients["cloudwatch"], clients["events"], clients["sqs"])
    answers, statements = _monitoring_answers(uc, tmp_path, drifted=True)
    ex = sfn_world.execute(uc, "monitoring", answers, params={"event_dates": list(WINDOW)})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    _check_monitoring_queries(uc, ex, statements)
    assert "alert.events" in ex.entered() and "alert: succeeded" in ex.entered()
    assert ("report", "run") in ex.worker_calls()
    got = clients["sqs"].receive_message(QueueUrl=made["queue_url"], MaxNumberOfMessages=10).get("Messages", [])
    assert len(got) == 1, got
    event = json.loads(got[0]["Body"])
    drift = drift_alert_asset(uc).name
    assert event["source"] == "mlblueprints" and event["detail"]["asset"] == drift
    extra = event["detail"]["extra"]
    assert extra["window"] == list(WINDOW) and extra["drifted_columns"] == ["amount", "card_amount_avg_7d"]
    assert extra["model_version"] == 3 and extra["reason"] == _decision(uc, True)["reason"]
    # the training machine, started by the rule with this event as its input, is triggered by it
    spec = patterns.declare("training", names.on_aws(uc))
    run_doc = {"execution": "retrain-1", "input": event}
    store = worker.S3Store(sfn_world.s3, names.on_aws(uc), "training", "retrain-1")
    ctx = worker.step_context(names.on_aws(uc), spec, spec.steps[0].id, "run", run_doc, 1, store)
    assert ctx.triggering == {drift: [extra]}


# ---------------------------------------------------------------- explainability

# CI (class imbalance) lies in [-1, 1] by definition: [-1, 1] must pass, a minimum of 2 must break
PASSES = {"CI": {"min": -1.0, "max": 1.0}, "DI": {"min": 0.0}}
BREAKS = {"CI": {"min": 2.0}}


def _explainability_usecase(gate):
    facets = [{"name": "channel", "value_or_threshold": ["online"]}]
    return fraud_usecase_for_tests(explainability={"facets": facets, "gate": gate, "sample_size": 300})


def _register_challenger(uc, tmp_path):
    """A booster registered as a version in the local MLflow store (the aws registry's store when no
    managed tracking server is named) with the holdout it was judged on, and the model package the
    training pattern would have registered for it in moto's SageMaker. Returns (version, booster)."""
    import boto3

    version, booster = register_explainable_version(uc, tmp_path, n=400, rounds=10)
    sm = boto3.client("sagemaker", region_name=uc.aws_settings.region)
    group = tr.model_package_group_name(uc)
    sm.create_model_package_group(ModelPackageGroupName=group)
    image = f"141502667606.dkr.ecr.{uc.aws_settings.region}.amazonaws.com/sagemaker-xgboost:1.7-1"
    sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification={
            "Containers": [{"Image": image, "ModelDataUrl": tr.output_s3_uri(uc) + "/train-1/output/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        CustomerMetadataProperties={"mlflow_model": uc.model_name, "mlflow_version": str(version)},
        ModelApprovalStatus="PendingManualApproval",
    )
    return version, booster


def _clarify_job(uc, booster, s3):
    """The Clarify job, which moto cannot run (nor its .sync): from what the job was given only - the
    analysis config and the dataset at its inputs - the booster's predicted labels at the config's
    threshold, the config's bias metrics and exact TreeSHAP values (standing in for the container's
    Kernel SHAP), written as analysis.json and explanations_shap/out.csv under the job's output."""
    import io
    import tempfile
    from pathlib import Path

    import pandas as pd

    from mlblueprints.explain import core

    def read(uri):
        bucket, key = req.split_s3_uri(uri)
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def run(call: Call, n):
        p = call.parameters
        inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in p["ProcessingInputs"]}
        config = json.loads(read(inputs["analysis_config"]))
        bucket, prefix = req.split_s3_uri(inputs["dataset"])
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        data = pd.concat([pd.read_parquet(io.BytesIO(read(f"s3://{bucket}/{k}"))) for k in keys])
        assert list(data.columns) == config["headers"]
        doc, shap = clarify_analysis(config, data, booster)
        [out] = p["ProcessingOutputConfig"]["Outputs"]
        obucket, oprefix = req.split_s3_uri(out["S3Output"]["S3Uri"])
        with tempfile.TemporaryDirectory() as d:
            core.write_analysis(doc, Path(d), shap)
            for rel in ("analysis.json", "explanations_shap/out.csv"):
                s3.put_object(Bucket=obucket, Key=f"{oprefix.rstrip('/')}/{rel}", Body=(Path(d) / rel).read_bytes())
        return None  # the harness answers with DescribeProcessingJob of the completed job

    return run


def _explainability_answers(uc, booster, s3):
    """The worker's phases are the real worker (``run_phase`` on the aws target, its documents on
    moto's S3 where the state machine reads and writes them: the run document it recorded, the
    Clarify job's output it put for ``finish``); only the Processing jobs around them and the
    Clarify job are stubs (moto runs no job)."""

    def real(step, phase):
        def run(call: Call, n):
            args = call.parameters["AppSpecification"]["ContainerArguments"]
            execution, try_number = args[5], int(args[7])
            store = worker.S3Store(s3, names.on_aws(uc), "explainability", execution)
            return worker.run_phase(names.on_aws(uc), "explainability", step, phase, store, try_number)

        return run

    spec = patterns.declare("explainability", names.on_aws(uc))
    answers = {(s.id, ph): real(s.id, ph) for s in spec.steps for ph in ("run", "prepare", "finish")}
    answers["processing"] = _clarify_job(uc, booster, s3)
    return answers


def _challenger_event(uc, version):
    """The event the training machine's publish step puts, as the stack's rule hands it to the
    explainability machine (its input)."""
    from mlblueprints.core.naming import registered_model_asset

    asset = registered_model_asset(uc)
    return {
        "version": "0",
        "source": "mlblueprints",
        "detail-type": "mlblueprints asset updated",
        "detail": {
            "asset": asset.name,
            "uri": asset.uri,
            "usecase": uc.name,
            "pattern": "training",
            "execution": "train-1",
            "extra": {"model": uc.model_name, "version": version, "run_id": "train-1"},
        },
    }


def _document(sfn_world, ex, rel):
    bucket, prefix = ex.services.key_prefix()
    return json.loads(sfn_world.s3.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read())


def _explained_event(sfn_world, ex):
    from mlblueprints.core.naming import explained_model_asset

    [event] = _document(sfn_world, ex, names.step_key("gate", "run"))["events"]
    detail = json.loads(event["Detail"])
    assert detail["asset"] == explained_model_asset(ex.services.uc).name
    return detail["extra"]


@pytest.mark.slow
def test_explainability_started_by_the_challenger_event_runs_the_clarify_job_and_passes_the_gate(
    sfn_world, tmp_path, monkeypatch
):
    """The machine started with the registered challenger's event (as the stack's rule starts it):
    the real worker's target picks the event's version, its prepare phase uploads the holdout and
    the analysis config and creates the shadow model (moto's SageMaker), the state machine runs the
    Clarify job with the block the prepare phase built (the job is a stub: moto runs none), the
    real finish phase logs the job's analysis with the version, and the real gate passes it: no
    fairness tag, the explained event says passed."""
    import boto3

    from mlblueprints.aws import clarify as cl
    from mlblueprints.registry import local as registry

    monkeypatch.setenv("MLB_HOME", str(tmp_path / "home"))
    uc = _explainability_usecase(PASSES)
    version, booster = _register_challenger(uc, tmp_path)
    answers = _explainability_answers(uc, booster, sfn_world.s3)
    ex = sfn_world.execute(uc, "explainability", answers, execution_input=_challenger_event(uc, version))
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert ex.worker_calls() == [
        ("target", "run"),
        ("analyse", "prepare"),
        ("analyse", "finish"),
        ("gate", "run"),
        ("report", "run"),
    ]
    target = _document(sfn_world, ex, names.step_key("target", "result"))
    assert target["version"] == version and target["chosen_by"] == "the challenger event"
    # the Clarify job: the prepare phase's request, named for this try, its output under its own name
    [job] = [c for c in ex.services.calls if c.kind == "processing"]
    called = _document(sfn_world, ex, names.step_key("analyse", "call"))
    name = job.parameters["ProcessingJobName"]
    assert tr.SAGEMAKER_NAME_RE.match(name) and job.state == "analyse.sagemaker_processing"

    def tags_by_key(request):
        return {**request, "Tags": sorted(request["Tags"], key=lambda t: t["Key"])}

    assert tags_by_key(job.parameters) == tags_by_key(cl.request_for_try(called["request"], name, 1))
    assert job.parameters["RoleArn"] == uc.aws_settings.iam_role_arn
    # the shadow model the analysis config names was created from the version's model package
    sm = boto3.client("sagemaker", region_name=uc.aws_settings.region)
    shadow = cl.shadow_model_name(uc, ex.services.execution)
    assert sm.describe_model(ModelName=shadow)["ModelName"] == shadow
    # finish logged the job's analysis with the version; the gate passed it
    gate = _document(sfn_world, ex, names.step_key("gate", "result"))
    assert gate["passed"] and gate["reasons"] == [] and gate["tag"] is None
    tags = dict(registry.client(uc).get_model_version(uc.model_name, str(version)).tags)
    assert registry.FAIRNESS_FAILED_TAG not in tags and tags[registry.EXPLAINED_BY_TAG] == ex.services.execution
    assert _explained_event(sfn_world, ex) == {
        "version": version,
        "passed": True,
        "reasons": [],
        "run_id": ex.services.execution,
    }
    assert "gate.events" in ex.entered() and "Succeeded" in ex.entered()
    # the run report the real report phase wrote is kept with the execution, encrypted as the rest
    bucket, prefix = ex.services.key_prefix()
    kept = sfn_world.s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/home/runs/").get("Contents", [])
    assert kept
    head = sfn_world.s3.head_object(Bucket=bucket, Key=kept[0]["Key"])
    assert head["ServerSideEncryption"] == "aws:kms" and head.get("BucketKeyEnabled") is True


def _canary_call(uc, *, made_before=False):
    """The bake's prepare phase as ``AwsEndpoint.canary`` hands a blue/green update over: the
    challenger's CreateModel and CreateEndpointConfig and the UpdateEndpoint (the builders'
    requests), None for what an earlier try made or started (``made_before``)."""
    from mlblueprints.aws import serving as sv

    aws_uc = names.on_aws(uc)
    package = f"arn:aws:sagemaker:eu-west-1:{uc.aws_settings.account_id}:model-package/fraud-detection/4"
    model = sv.create_model_request(aws_uc, version=4, model_package_arn=package, git_commit="abc", run_id="r")
    config = sv.create_endpoint_config_request(aws_uc, version=4, model_name=model["ModelName"])
    green = config["EndpointConfigName"]
    update = sv.update_endpoint_request(aws_uc, config_name=green, alarms=list(sv.alarm_names(aws_uc).values()))
    request = {
        "EndpointName": sv.endpoint_name(aws_uc),
        "Model": None if made_before else model,
        "EndpointConfig": None if made_before else config,
        "Update": None if made_before else update,
        "StartedAt": "2026-01-01T00:00:00+00:00",
        "PollSeconds": 1,
        "MaxPolls": 30,
    }
    state = {"blue": "blue-config", "green": green, "since": "2026-01-01T00:00:00+00:00", "version": 4}
    state.update(champion=3, run_id="r")
    call = service.ServiceCall(
        service.SAGEMAKER_ENDPOINT,
        request,
        "endpoint",
        "resume_canary",
        state,
        then="mlblueprints.serving.steps:_baked",
        during="canary_traffic",
    )
    return call, (model, config, update)


def _promotion_answers(uc, s3, call, ends_on, polls_updating=2):
    """Stubbed workers but the bake's phases as handed over; the during phase writes its ready
    document (as ``run_phase`` does once the traffic is loaded), then its outcome; DescribeEndpoint
    says Updating ``polls_updating`` times, then InService on ``ends_on``."""
    answers = _service_answers(uc, "promotion", lambda: None)
    answers[("bake", "prepare")] = lambda c, n: {**worker.service_outcome(call), "call": call.as_dict()}

    def during(c, n):
        execution = c.parameters["AppSpecification"]["ContainerArguments"][5]
        worker.S3Store(s3, names.on_aws(uc), "promotion", execution).put(names.step_key("bake", "ready"), {})
        return {
            "status": "succeeded",
            "result": {"sent": {"requests": 640, "statuses": {"200": 640}, "seconds": 31.5}, "labels": {}},
        }

    answers[("bake", "during")] = during
    answers["describe_endpoint"] = lambda c, n: (
        {
            "EndpointName": c.parameters["EndpointName"],
            "EndpointStatus": "Updating",
            "EndpointConfigName": "blue-config",
        }
        if n <= polls_updating
        else {
            "EndpointName": c.parameters["EndpointName"],
            "EndpointStatus": "InService",
            "EndpointConfigName": ends_on,
        }
    )
    return answers


@pytest.mark.slow
def test_the_canary_creates_the_model_and_config_and_updates_the_endpoint_natively_polling_until_it_ends(sfn_world):
    """Promotion's bake on Step Functions: sagemaker:createModel, createEndpointConfig and
    updateEndpoint with exactly the requests the Airflow task sends (the builders', as the prepare
    phase handed them over), then describeEndpoint every PollSeconds until the update ends, beside
    the worker's during phase (the traffic and the score-shift metric); the final describe is the
    output the finish phase resumes from. A model an earlier call made ("already existing") is no
    failure. Then decide and report."""
    uc = fraud_usecase_for_tests()
    call, (model, config, update) = _canary_call(uc)
    answers = _promotion_answers(uc, sfn_world.s3, call, ends_on=config["EndpointConfigName"])
    answers["model"] = lambda c, n: (
        "fail",
        "SageMaker.AmazonSageMakerException",
        "Cannot create already existing model",
    )
    ex = sfn_world.execute(uc, "promotion", answers)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    by_kind = {
        k: [c for c in ex.services.calls if c.kind == k] for k in ("model", "endpoint_config", "update_endpoint")
    }
    assert all(c.parameters == model for c in by_kind["model"]) and len(by_kind["model"]) == 1 + uc.retries
    assert [c.parameters for c in by_kind["endpoint_config"]] == [config]
    assert [c.parameters for c in by_kind["update_endpoint"]] == [update]
    describes = [c for c in ex.services.calls if c.kind == "describe_endpoint"]
    assert len(describes) == 3 and all(
        c.parameters == {"EndpointName": call.request["EndpointName"]} for c in describes
    )
    assert "bake.wait" in ex.entered() and ("bake", "during") in ex.worker_calls()
    # the update waited for the traffic: the during phase ran (and was ready) before any endpoint call
    order = [c.worker or c.kind for c in ex.services.calls]
    assert order.index(("bake", "during")) < order.index("model") < order.index("update_endpoint")
    output = _document(sfn_world, ex, names.step_key("bake", "output"))
    assert output["Endpoint"]["EndpointStatus"] == "InService"
    assert output["Endpoint"]["EndpointConfigName"] == config["EndpointConfigName"]
    assert [w for w in ex.worker_calls() if w[0] != "bake"] == [
        ("target", "run"),
        ("deploy", "run"),
        ("decide", "run"),
        ("report", "run"),
    ]
    assert [p for s, p in ex.worker_calls() if s == "bake"] == ["prepare", "during", "finish"]

    # an update an earlier try started: nothing created or updated, only polled beside the traffic
    call, _ = _canary_call(uc, made_before=True)
    ex = sfn_world.execute(
        uc,
        "promotion",
        _promotion_answers(uc, sfn_world.s3, call, ends_on=config["EndpointConfigName"], polls_updating=0),
    )
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    kinds = [c.kind for c in ex.services.calls]
    assert "model" not in kinds and "endpoint_config" not in kinds and "update_endpoint" not in kinds
    assert kinds.count("describe_endpoint") == 1 and ("bake", "during") in ex.worker_calls()


@pytest.mark.slow
def test_an_update_sagemaker_rolled_back_is_judged_rolled_back_by_the_real_finish_phase(
    sfn_world, tmp_path, monkeypatch
):
    """The rollback branch: the score-shift alarm fired, SageMaker ended the update on the
    champion's config; the real finish phase (``resume_canary`` on moto's CloudWatch and S3) judges
    the bake failed, naming the alarm, so decide rolls back. A during phase that failed for good
    fails the step with its reason, after the report, and decide never runs."""
    import boto3

    from mlblueprints.aws import serving as sv

    monkeypatch.setenv("MLB_HOME", str(tmp_path / "home"))
    uc = fraud_usecase_for_tests()
    aws_uc = names.on_aws(uc)
    cw = boto3.client("cloudwatch", region_name=uc.aws_settings.region)
    for alarm in sv.alarm_requests(aws_uc):
        cw.put_metric_alarm(**alarm)
    shift = sv.alarm_names(aws_uc)["score_shift_psi"]
    cw.set_alarm_state(AlarmName=shift, StateValue="ALARM", StateReason="Threshold Crossed: 1 datapoint [0.9]")
    call, _ = _canary_call(uc)
    answers = _promotion_answers(uc, sfn_world.s3, call, ends_on="blue-config")

    def finish(c, n):
        args = c.parameters["AppSpecification"]["ContainerArguments"]
        store = worker.S3Store(sfn_world.s3, aws_uc, "promotion", args[5])
        return worker.run_phase(aws_uc, "promotion", "bake", "finish", store, int(args[7]))

    answers[("bake", "finish")] = finish
    ex = sfn_world.execute(uc, "promotion", answers)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    baked = _document(sfn_world, ex, names.step_key("bake", "result"))
    assert baked["passed"] is False
    assert baked["tripped"] == [
        f"score_shift_psi: CloudWatch alarm {shift} in ALARM (Threshold Crossed: 1 datapoint [0.9])"
    ]
    [bake] = baked["bakes"]
    assert bake["sent"]["requests"] == 640
    assert ("decide", "run") in ex.worker_calls()

    answers[("bake", "during")] = lambda c, n: {
        "status": "failed",
        "error": {"Error": "PermanentError", "Cause": "the blue/green update of fraud-detection did not end in time"},
    }
    ex = sfn_world.execute(uc, "promotion", answers)
    assert ex.status == "FAILED" and ex.error == "PermanentError" and "Failed: bake" in ex.entered()
    assert "did not end in time" in ex.cause
    ran = ex.worker_calls()
    assert ("report", "run") in ran and not [w for w in ran if w[0] == "decide"]


@pytest.mark.slow
def test_a_failed_fairness_gate_tags_the_version_and_the_execution_succeeds_as_the_dag_does(
    sfn_world, tmp_path, monkeypatch
):
    """A bound the analysis breaks: the real gate tags the version (promotion refuses it) and puts
    the explained event with passed false; a failed fairness gate is a verdict, not a failed step,
    so the definition ends in Succeeded with the gate succeeded (the DAG's gate task succeeds too).
    Started by hand with the version Param; the Clarify job is the stub of the test above."""
    from mlblueprints.registry import local as registry

    monkeypatch.setenv("MLB_HOME", str(tmp_path / "home"))
    uc = _explainability_usecase(BREAKS)
    version, booster = _register_challenger(uc, tmp_path)
    answers = _explainability_answers(uc, booster, sfn_world.s3)
    ex = sfn_world.execute(uc, "explainability", answers, params={"version": version})
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    entered = ex.entered()
    assert "gate: succeeded" in entered and "gate.events" in entered and not [s for s in entered if "Failed" in s]
    target = _document(sfn_world, ex, names.step_key("target", "result"))
    assert target["chosen_by"] == "the version Param"
    gate = _document(sfn_world, ex, names.step_key("gate", "result"))
    assert not gate["passed"] and gate["reasons"] and all(r.startswith("CI of channel=online") for r in gate["reasons"])
    tags = dict(registry.client(uc).get_model_version(uc.model_name, str(version)).tags)
    assert tags[registry.FAIRNESS_FAILED_TAG] == gate["tag"] == "; ".join(gate["reasons"])
    event = _explained_event(sfn_world, ex)
    assert event["passed"] is False and event["reasons"] == gate["reasons"] and event["version"] == version
    with pytest.raises(registry.PromotionRefused, match="failed the fairness gate"):
        registry.promote(uc, version)
    assert ("report", "run") in ex.worker_calls()


# ---------------------------------------------------------------- promotion


def test_a_bake_done_in_the_worker_skips_the_update_and_a_refused_bake_ends_in_its_fail_state(sfn_world):
    """A prepare phase that did the bake itself (the variant-weights canary, judged in the worker)
    goes past the endpoint states to decide and report; a bake the prepare phase refuses (a
    PermanentError: an endpoint serving another config) ends in the bake's Fail state after the
    report, and decide - which would move the alias - never runs."""
    uc = fraud_usecase_for_tests()
    ex = sfn_world.execute(uc, "promotion", _service_answers(uc, "promotion", lambda: None))
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    assert [s for s, _ in ex.worker_calls()] == ["target", "deploy", "bake", "decide", "report"]
    assert ("bake", "prepare") in ex.worker_calls() and not [
        c for c in ex.services.calls if c.kind == "describe_endpoint"
    ]

    answers = _service_answers(uc, "promotion", lambda: None)
    answers[("bake", "prepare")] = lambda call, n: {
        "status": "failed",
        "error": {"Error": "PermanentError", "Cause": "endpoint fraud-detection is Failed after the update"},
    }
    ex = sfn_world.execute(uc, "promotion", answers)
    assert ex.status == "FAILED" and ex.error == "PermanentError" and "Failed: bake" in ex.entered()
    ran = ex.worker_calls()
    assert ran.count(("bake", "prepare")) == 1 and ("report", "run") in ran
    assert not [w for w in ran if w[0] == "decide"]
