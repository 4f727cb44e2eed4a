"""The committed definitions: what the declarations render, valid ASL, and the Athena block the
Airflow operator sends; deploy and run through the CLI under moto; the worker runs real steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlblueprints.config import load_usecase
from mlblueprints.stepfunctions import asl, deploy, names, worker

ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = ROOT / ".tools" / "npm" / "node_modules" / ".bin" / "asl-validator"


def _shipped():
    return load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")


def test_committed_definitions_are_what_the_declarations_render():
    uc = _shipped()
    rendered = asl.render_usecase(uc)
    assert sorted(rendered) == [
        "explainability",
        "features",
        "lakehouse",
        "monitoring",
        "promotion",
        "scoring",
        "training",
    ]
    committed = sorted(p.name for p in (ROOT / "statemachines" / uc.name).glob("*.asl.json"))
    assert committed == sorted(f"{p}.asl.json" for p in rendered)
    for pattern, definition in rendered.items():
        path = asl.definition_path(ROOT / "statemachines", uc.name, pattern)
        assert path.read_text() == asl.text(definition), f"{path} is stale: run `mlblueprints statemachines render`"
        assert len(path.read_bytes()) < 1024 * 1024  # the largest definition Step Functions takes


def test_every_pattern_that_applies_is_rendered():
    """Every pattern of the shipped use case is rendered (asl.NOT_RENDERED, the patterns left to
    Airflow, is empty)."""
    from mlblueprints import patterns

    uc = _shipped()
    applies = [p for p in patterns.PATTERNS if patterns.declare(p, names.on_aws(uc)) is not None]
    assert asl.NOT_RENDERED == {}
    assert "promotion" in applies
    assert sorted(asl.render_usecase(uc)) == sorted(p for p in applies if p not in asl.NOT_RENDERED)


def test_every_definition_passes_asl_validator(tmp_path):
    if not ASL_VALIDATOR.exists():
        pytest.fail("asl-validator is not installed: run `make tools` (make test does)")
    files = sorted((ROOT / "statemachines").rglob("*.asl.json"))
    assert files
    out = subprocess.run(
        [str(ASL_VALIDATOR), *(a for f in files for a in ("--json-path", str(f)))], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # and the validator does refuse a broken one
    broken = json.loads(files[0].read_text())
    broken["States"]["Start"]["Next"] = "nowhere"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    bad = subprocess.run(
        [str(ASL_VALIDATOR), "--json-path", str(tmp_path / "broken.json")], capture_output=True, text=True
    )
    assert bad.returncode != 0


def test_only_substitutions_and_no_machine_values_in_the_definitions():
    uc = _shipped()
    text = "".join(p.read_text() for p in (ROOT / "statemachines" / uc.name).glob("*.asl.json"))
    for name in (*names.AWS_FIELDS, *names.EXTRA):
        assert "${" + name + "}" in text
    assert uc.aws.bucket not in text and uc.aws.iam_role_arn not in text and uc.aws.kms_key_arn not in text
    used = set(__import__("re").findall(r"\$\{([A-Za-z0-9_]+)\}", text))
    assert used == set(names.substitutions(uc))


def _athena_blocks(definition):
    """The Parameters of every startQueryExecution Task of a definition, nested ones included."""
    blocks = []

    def walk(states):
        for st in states.values():
            if st.get("Resource") == "arn:aws:states:::athena:startQueryExecution.sync":
                blocks.append(st["Parameters"])
            for b in st.get("Branches", []):
                walk(b["States"])

    walk(definition["States"])
    return blocks


def test_every_pattern_with_athena_steps_is_checked_below():
    """The parametrized test below covers each committed definition that runs Athena statements:
    the lakehouse's layers, the monitoring pattern's measure (the window's UNLOADs) and decide (the
    window's rows and decision MERGEd, the tables' maintenance), and any other."""
    uc = _shipped()
    with_athena = sorted(p for p, d in asl.render_usecase(uc).items() if _athena_blocks(d))
    assert {"lakehouse", "monitoring"} <= set(with_athena)
    assert with_athena == sorted(ATHENA_PATTERNS)


ATHENA_PATTERNS = ("features", "lakehouse", "monitoring", "scoring", "training")


@pytest.mark.parametrize("pattern", ATHENA_PATTERNS)
def test_the_athena_block_is_what_the_airflow_operator_sends(pattern):
    """The Airflow task's StartQueryExecution (AthenaStatementsOperator through AthenaHook) and the
    state machine's Parameters resolve to the same dict for a statement and token, in every Athena
    step of the pattern's committed definition."""
    from unittest import mock

    from mlblueprints.airflow.builder import service_operator
    from mlblueprints.core.service import Statement

    uc = _shipped().model_copy(update={"target": "aws"})
    op = service_operator("athena", uc, task_id="athena", request=[])
    sent = {}
    client = mock.Mock()
    client.start_query_execution.side_effect = lambda **kw: sent.update(kw) or {"QueryExecutionId": "q"}
    with mock.patch.object(type(op.hook), "get_conn", return_value=client):
        ti = mock.Mock(task_id="step.athena", try_number=1)
        op._start({"ti": ti, "run_id": "r"}, Statement("merge", "MERGE INTO t ...", "merge"), 1)
    definition = json.loads(asl.definition_path(ROOT / "statemachines", uc.name, pattern).read_text())
    blocks = _athena_blocks(definition)
    assert blocks and all(b == blocks[0] | {"ClientRequestToken.$": b["ClientRequestToken.$"]} for b in blocks)
    for block in blocks:
        resolved = json.loads(names.substitute(json.dumps(block), names.substitutions(uc)))
        resolved["QueryString"] = resolved.pop("QueryString.$") and sent["QueryString"]
        resolved["ClientRequestToken"] = resolved.pop("ClientRequestToken.$") and sent["ClientRequestToken"]
        assert resolved == sent


@pytest.mark.aws
def test_deploy_and_run_through_the_cli_under_moto(monkeypatch, capsys):
    from moto import mock_aws

    from mlblueprints import cli

    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        import boto3

        assert cli.main(["statemachines", "deploy", "fraud_detection", "--image-tag", "t1"]) == 0
        assert cli.main(["statemachines", "deploy", "fraud_detection", "--image-tag", "t2"]) == 0  # an update
        sfn = boto3.client("stepfunctions", region_name="eu-west-1")
        machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
        assert sorted(machines) == [
            f"mlb-fraud-detection-{p}"
            for p in ("explainability", "features", "lakehouse", "monitoring", "promotion", "scoring", "training")
        ]
        d = sfn.describe_state_machine(stateMachineArn=machines["mlb-fraud-detection-training"])
        assert "${" not in d["definition"] and "mlblueprints-worker:t2" in d["definition"]
        assert d["roleArn"] == "arn:aws:iam::123456789012:role/mlb-fraud-detection-states"
        capsys.readouterr()
        assert (
            cli.main(
                [
                    "statemachines",
                    "run",
                    "fraud_detection",
                    "lakehouse",
                    "--name",
                    "run-1",
                    "--params",
                    '{"landing_dates": ["2024-03-01"]}',
                ]
            )
            == 0
        )
        arn = capsys.readouterr().out.strip()
        ex = sfn.describe_execution(executionArn=arn)
        assert ex["name"] == "run-1" and json.loads(ex["input"]) == {"params": {"landing_dates": ["2024-03-01"]}}


def test_deploy_refuses_a_stale_definition(tmp_path):
    uc = _shipped()
    shutil.copytree(ROOT / "statemachines", tmp_path / "sm")
    p = asl.definition_path(tmp_path / "sm", uc.name, "training")
    p.write_text(p.read_text().replace('"MaxAttempts": 2', '"MaxAttempts": 9'))
    with pytest.raises(ValueError, match="not what the declarations render"):
        deploy.definitions(uc, tmp_path / "sm")


def test_the_worker_refuses_a_deployment_for_other_resources():
    uc = _shipped()
    worker.check_deployment(uc, {"MLB_EXPECT_BUCKET": uc.aws.bucket})
    with pytest.raises(worker.DeploymentMismatch, match="Bucket"):
        worker.check_deployment(uc, {"MLB_EXPECT_BUCKET": "another-bucket"})


@pytest.mark.slow
def test_the_worker_runs_the_project_steps_locally(tmp_path, monkeypatch):
    """The entry point, in a process of its own, runs real steps of the feature and training
    patterns on the local target with the documents in a directory: a plan from the Params, a
    permanent failure as a 'failed' outcome (exit 0), a skip as 'skipped'."""
    home = tmp_path / "home"
    env = {**__import__("os").environ, "MLB_HOME": str(home), "MLB_PROJECT_ROOT": str(ROOT)}
    store = worker.DirStore(tmp_path / "run")
    store.put(
        names.RUN_DOCUMENT, {"execution": "e1", "input": {"params": {"event_dates": ["2024-03-02", "2024-03-04"]}}}
    )

    def run(pattern, step, phase, *extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mlblueprints.stepfunctions.worker",
                "fraud_detection",
                pattern,
                step,
                phase,
                "--execution",
                "e1",
                "--local",
                str(tmp_path / "run"),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    out = run("features", "plan", "run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert store.get("steps/plan/run.json")["status"] == "succeeded"
    assert store.get("steps/plan/result.json")["range"] == ["2024-03-02", "2024-03-04"]
    # publish of a candidate that was not registered: StepSkipped -> skipped
    store.put("steps/register/result.json", {"verdict": "not promoted"})
    out = run("training", "publish", "run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert store.get("steps/publish/run.json")["status"] == "skipped"
    # no landing dates anywhere: a PermanentError -> failed, exit 0 (not retried)
    store.put(names.RUN_DOCUMENT, {"execution": "e1", "input": {}})
    out = run("lakehouse", "ingest__transactions", "run")
    assert out.returncode == 0, out.stderr[-3000:]
    outcome = store.get("steps/ingest__transactions/run.json")
    assert outcome["status"] == "failed" and "landing dates" in outcome["error"]["Cause"]


def test_the_worker_keeps_the_window_report_with_the_execution(tmp_path, monkeypatch):
    """A Processing job's disk goes with the job: the Evidently report a monitoring phase wrote under
    MLB_HOME/monitoring is kept under the execution's prefix (home/), as the run reports are. The
    phase here is the real alert step on a decision that did not fire (skipped)."""
    home = tmp_path / "home"
    monkeypatch.setenv("MLB_HOME", str(home))
    report = home / "monitoring" / "fraud_detection" / "2024-03-07_2024-03-07" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>drift</html>")
    store = worker.DirStore(tmp_path / "run")
    store.put(names.RUN_DOCUMENT, {"execution": "e1", "input": {}})
    store.put("steps/decide/result.json", {"fired": False, "reason": "no policy signal", "rerun_of": None})
    outcome = worker.run_phase(names.on_aws(_shipped()), "monitoring", "alert", "run", store)
    assert outcome["status"] == "skipped" and "no policy signal" in outcome["reason"]
    kept = tmp_path / "run" / "home" / "monitoring" / "fraud_detection" / "2024-03-07_2024-03-07" / "report.html"
    assert kept.read_text() == "<html>drift</html>"


def test_a_scheduled_run_covers_the_interval_of_its_own_patterns_cron(tmp_path):
    """A schedule starts a machine with its scheduled time; the run's data interval ends there and
    starts at the previous tick of that pattern's cron: the lakehouse's ``schedule``, scoring's
    ``scoring.schedule`` - which the scoring plan turns into the days it scores."""
    from datetime import date

    from mlblueprints import patterns
    from mlblueprints.scoring import core as scoring_core

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    uc = uc.model_copy(update={"scoring": uc.scoring.model_copy(update={"schedule": "30 6 * * 1-5"})})
    scheduled = {"lakehouse": "2024-03-11T00:00:00Z", "scoring": "2024-03-11T06:30:00Z"}  # a Monday
    store = worker.DirStore(tmp_path / "s-1")
    got = {}
    for pattern, when in scheduled.items():
        spec = patterns.declare(pattern, uc)
        run_doc = {"execution": "s-1", "input": {"scheduled_time": when}}
        ctx = worker.step_context(uc, spec, spec.steps[0].id, "run", run_doc, 1, store)
        got[pattern] = (ctx.interval_start.isoformat(), ctx.interval_end.isoformat())
    assert got == {
        "lakehouse": ("2024-03-10T00:00:00+00:00", "2024-03-11T00:00:00+00:00"),  # @daily: the day before
        "scoring": ("2024-03-08T06:30:00+00:00", "2024-03-11T06:30:00+00:00"),  # weekdays: from Friday's tick
    }
    start, end = got["scoring"]
    assert scoring_core.interval([], [], start, end, scheduled=True) == (
        date(2024, 3, 8),
        date(2024, 3, 10),
        "the run's data interval",
    )
