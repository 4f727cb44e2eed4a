"""The CloudFormation template: cfn-lint with no error, checkov with no failed check outside the
checked-in skip list (each with its reason, each still needed), parameters from the use case."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from mlblueprints import infra
from mlblueprints.config import load_usecase

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "iac" / "bin"
TEMPLATES = sorted((ROOT / "infra").glob("*.yaml"))
TEMPLATES = [t for t in TEMPLATES if t.name != "checkov-skips.yaml"]


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: run `make tools` (make test does)")
    return str(path)


def _checkov(template: Path, skips: list[str]) -> dict:
    cmd = [
        _tool("checkov"),
        "-f",
        str(template),
        "--framework",
        "cloudformation",
        "--output",
        "json",
        "--skip-download",
    ]
    if skips:
        cmd += ["--skip-check", ",".join(skips)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin"})
    data = json.loads(out.stdout) if out.stdout.strip() else {}
    return data if isinstance(data, dict) else data[0]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_finds_no_error(template):
    out = subprocess.run([_tool("cfn-lint"), str(template)], capture_output=True, text=True)
    assert out.returncode & 2 == 0, out.stdout  # bit 2: errors (4: warnings, printed but allowed)


def _every_resource(template: Path, out: Path) -> Path:
    """A copy of ``template`` whose switches ("true"/"false" parameters that default to "false")
    have no default: checkov evaluates a resource's Condition with the parameters' defaults and
    checks none of the resources it leaves out, so the copy is what it must check."""
    text = template.read_text()
    params = yaml.load(text, Loader=_cfn_loader()).get("Parameters", {})
    switches = [
        n for n, p in params.items() if p.get("AllowedValues") == ["true", "false"] and p.get("Default") == "false"
    ]
    for name in switches:
        text, n = re.subn(rf'(\n  {name}:\n(?:    .*\n)*?)    Default: "false"\n', r"\1", text, count=1)
        assert n == 1, f'{template.name}: the default of {name} is not one line `Default: "false"`'
    path = out / template.name
    path.write_text(text)
    return path


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_checkov_fails_nothing_outside_the_skip_list(template, tmp_path):
    skips = yaml.safe_load((ROOT / "infra" / "checkov-skips.yaml").read_text()) or {}
    assert all(isinstance(v, str) and len(v) > 40 for v in skips.values()), "every skip needs its reason"
    template = _every_resource(template, tmp_path)
    result = _checkov(template, list(skips))
    failed = {c["check_id"] for c in result.get("results", {}).get("failed_checks", [])}
    assert failed == set(), failed
    assert result["summary"]["passed"] > 50
    # the resources made only on request (the statements function, MWAA's role) are checked too
    checked = {
        c["resource"] for k in ("passed_checks", "failed_checks", "skipped_checks") for c in result["results"][k]
    }
    resources = yaml.load(template.read_text(), Loader=_cfn_loader())["Resources"]
    conditional = {f"{r['Type']}.{n}" for n, r in resources.items() if "Condition" in r}
    checked_types = {c.rsplit(".", 1)[0] for c in checked}
    missing = {c for c in conditional if c.rsplit(".", 1)[0] in checked_types} - checked
    assert not missing, f"checkov checked no resource {sorted(missing)}"
    # every skip is still needed: without the list, exactly the skipped checks fail
    unskipped = _checkov(template, [])
    assert {c["check_id"] for c in unskipped["results"]["failed_checks"]} == set(skips)


def test_parameters_from_the_usecase_are_the_templates():
    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    params = infra.parameters(uc, image_tag="abc")
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    declared = template["Parameters"]
    required = {k for k, v in declared.items() if "Default" not in v}
    assert required <= set(params) <= set(declared)
    assert params["BucketName"] == uc.aws.bucket and params["SageMakerRoleName"] == "mlblueprints-execution"
    assert params["LakehouseScheduleExpression"] == "cron(0 0 * * ? *)"
    assert params["BronzePrefix1"] == "fraud_detection/warehouse/transactions_bronze/"
    assert params["GoldAssetNames"] == "fraud_detection.transaction_features"
    assert infra.schedule_expression("30 6 * * 1-5") == "cron(30 6 ? * 2-6 *)"
    with pytest.raises(ValueError):
        infra.schedule_expression("0 0 1 * 1")


def test_state_machines_get_every_substitution_and_the_statements_function_is_the_handler():
    """Each state machine of the template is given exactly the substitutions the definitions use;
    the statements function runs the handler the state machines are rendered against, from the
    worker image, and the state machines may invoke it and nothing else of Lambda."""
    import importlib

    from mlblueprints.stepfunctions import names

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    res = template["Resources"]
    machines = {k: v for k, v in res.items() if v["Type"] == "AWS::StepFunctions::StateMachine"}
    assert machines
    for name, machine in machines.items():
        given = set(machine["Properties"]["DefinitionSubstitutions"])
        assert given == set(names.substitutions(uc)), name
        # and every ${...} the committed definition uses has a value (CloudFormation fails otherwise)
        key = machine["Properties"]["DefinitionS3Location"]["Key"].rsplit("/", 1)[-1]
        used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", (ROOT / "statemachines" / uc.name / key).read_text()))
        assert used and used <= given, (name, used - given)
    fn = res["StatementsFunction"]["Properties"]
    assert fn["ImageConfig"]["EntryPoint"] == ["python", "-m", "awslambdaric"]
    module, _, attr = fn["ImageConfig"]["Command"][0].rpartition(".")
    assert callable(getattr(importlib.import_module(module), attr))
    assert "awslambdaric" in (ROOT / "infra/worker.Dockerfile").read_text()
    assert "--group worker" in (ROOT / "infra/worker.Dockerfile").read_text()
    statements = _statements(res["StatesRole"])
    invoke = [s for s in statements if "lambda" in str(s["Action"])]
    assert [s["Action"] for s in invoke] == ["lambda:InvokeFunction"]
    params = infra.parameters(uc, image_tag="abc")
    fn_arn = names.substitutions(uc)[names.STATEMENTS_FUNCTION]
    for arn in [
        invoke[0]["Resource"],
        *(m["Properties"]["DefinitionSubstitutions"][names.STATEMENTS_FUNCTION] for m in machines.values()),
    ]:
        resolved = arn.replace("${ResourcePrefix}", params["ResourcePrefix"]).replace("${AWS::Partition}", "aws")
        resolved = resolved.replace("${AWS::Region}", uc.aws.region).replace("${AWS::AccountId}", uc.aws.account_id)
        assert resolved == fn_arn
    assert fn["FunctionName"] == "${ResourcePrefix}-statements"
    # created once the image is in the repository the stack creates
    assert res["StatementsFunction"]["Condition"] == "ImagePushed" and params["WorkerImagePushed"] == "false"
    assert template["Conditions"]["ImagePushed"] == ["WorkerImagePushed", "true"]
    assert infra.parameters(uc, image_tag="abc", image_pushed=True)["WorkerImagePushed"] == "true"
    assert [w for w in infra.warnings(uc, image_pushed=False) if "statements function" in w]
    assert not [w for w in infra.warnings(uc, image_pushed=True) if "statements function" in w]


def _statements(role, condition_holds=True):
    """The statements of a role's first inline policy, a conditional one (``!If [cond, stmt,
    NoValue]``) taken as CloudFormation takes it when its condition holds (or not)."""
    out = []
    for st in role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]:
        if isinstance(st, list):  # !If
            st = st[1] if condition_holds else st[2]
            if st == "AWS::NoValue":
                continue
        out.append(st)
    return out


def test_scoring_transform_jobs_run_with_a_role_of_their_own_reading_and_writing_only_their_prefixes():
    """The state machines may create the scoring model and its transform job, wait for it (.sync's
    EventBridge rule) and stop it, and pass the transform role; that role reads the model archive
    and the run's input and writes the output - the prefixes the scorer and the builders use."""
    from mlblueprints.aws import training as tr
    from mlblueprints.stepfunctions import names

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    res = template["Resources"]
    params = infra.parameters(uc, image_tag="abc")
    assert params["HasScoring"] == "true" and params["TransformRoleName"] == "mlblueprints-transform"
    assert names.transform_role_arn(uc).endswith("/" + params["TransformRoleName"])
    states = {st["Sid"]: st for st in _statements(res["StatesRole"])}
    jobs = states["ScoringModelsAndTransformJobs"]
    assert {"sagemaker:CreateModel", "sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob"} <= set(
        jobs["Action"]
    )
    assert "sagemaker:StopTransformJob" in jobs["Action"] and all(
        ":model/" in r or ":transform-job/" in r for r in jobs["Resource"]
    )
    assert any(
        r.endswith("rule/StepFunctionsGetEventsForSageMakerTransformJobsRule")
        for r in states["SyncRulesStepFunctionsManages"]["Resource"]
    )
    assert ["Scoring", "TransformJobRole.Arn", "AWS::NoValue"] in states["PassTheJobRolesToSageMakerOnly"]["Resource"]
    assert "ScoringModelsAndTransformJobs" not in {st["Sid"] for st in _statements(res["StatesRole"], False)}
    role = res["TransformJobRole"]
    assert role["Condition"] == "Scoring" and role["Properties"]["RoleName"] == "TransformRoleName"
    rules = {st["Sid"]: st for st in _statements(role)}
    prefix = "${DataBucket.Arn}/${DataPrefix}/"
    key = uc.aws.s3_uri("x").split("/", 3)[3][: -len("x")]  # <prefix>/
    read = [r.removeprefix(prefix) for r in rules["ReadTheModelArchiveAndTheRunsInput"]["Resource"]]
    write = rules["WriteThePredictions"]["Resource"].removeprefix(prefix)
    assert rules["ReadTheModelArchiveAndTheRunsInput"]["Action"] == "s3:GetObject"
    assert "s3:GetObject" not in rules["WriteThePredictions"]["Action"]
    # the model archive (training output), the input the plan writes, the output the job writes
    assert tr.output_s3_uri(uc).split("/", 3)[3] + "/*" == key + read[0]
    assert uc.aws.s3_uri("_scoring").split("/", 3)[3] + "/*" == key + read[1]
    assert uc.aws.s3_uri("scoring", "output").split("/", 3)[3] + "/*" == key + write
    assert set(rules) == {
        "ReadTheModelArchiveAndTheRunsInput",
        "WriteThePredictions",
        "ListTheInputPrefix",
        "TheDataKey",
        "OwnLogs",
        "Metrics",
    }
    # a use case whose transform role is the training role is refused: the stack makes one per kind
    same = uc.model_copy(
        update={
            "scoring": uc.scoring.model_copy(
                update={"sagemaker": uc.scoring.sagemaker.model_copy(update={"role_arn": None})}
            )
        }
    )
    with pytest.raises(ValueError, match="scoring.sagemaker.role_arn"):
        infra.parameters(same, image_tag="abc")


def test_clarify_jobs_may_serve_their_shadow_endpoint_and_read_and_write_only_their_prefix():
    """With an explainability section: the job's role reads the dataset and config and writes the
    analysis under the prefix the explainer uses, and may create, invoke and delete the shadow
    endpoint; the steps' own policy may create the shadow model and pass it the job's role; MWAA
    may run the job (the state machines already may run processing jobs)."""
    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    res = template["Resources"]
    assert infra.parameters(uc, image_tag="abc")["HasExplainability"] == "true"
    no_section = uc.model_copy(update={"explainability": None})
    assert infra.parameters(no_section, image_tag="abc")["HasExplainability"] == "false"
    [condition, clarify, absent] = res["SageMakerJobRole"]["Properties"]["Policies"][1]
    assert condition == "Explainability" and absent == "AWS::NoValue"
    rules = {st["Sid"]: st for st in clarify["PolicyDocument"]["Statement"]}
    key = uc.aws.s3_uri("explainability").split("/", 3)[3]
    assert (
        rules["ReadTheDatasetAndConfigWriteTheAnalysis"]["Resource"]
        == "${DataBucket.Arn}/${DataPrefix}/explainability/*"
    )
    assert key == "fraud_detection/explainability"  # <DataPrefix>/explainability, as the explainer writes
    endpoint = set(rules["TheShadowEndpoint"]["Action"])
    assert {"sagemaker:CreateEndpoint", "sagemaker:InvokeEndpoint", "sagemaker:DeleteEndpoint"} <= endpoint
    steps = {
        st[1]["Sid"]: st
        for st in res["PatternStepsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if isinstance(st, list)
    }
    assert steps["ClarifyShadowModels"][0] == "Explainability"
    assert "sagemaker:CreateModel" in steps["ClarifyShadowModels"][1]["Action"]
    assert steps["PassTheJobRoleToTheShadowModel"][1]["Resource"] == "SageMakerJobRole.Arn"
    mwaa = {st["Sid"]: st for st in _statements(res["MwaaExecutionRole"])}
    assert "sagemaker:CreateProcessingJob" in mwaa["ClarifyJobsOfTheAwsTarget"]["Action"]
    assert "ClarifyJobsOfTheAwsTarget" not in {st["Sid"] for st in _statements(res["MwaaExecutionRole"], False)}


def _tasks(definition):
    """Every Task state of a definition, nested ones included."""
    out = []

    def walk(states):
        for st in states.values():
            if st.get("Type") == "Task":
                out.append(st)
            for b in st.get("Branches", []):
                walk(b["States"])

    walk(definition["States"])
    return out


def test_the_explainability_machine_is_started_by_a_registered_challenger_and_may_run_its_clarify_job():
    """The training machine's publish step puts the challenger Asset event; the stack's rule starts
    the explainability machine with it (as the explainability DAG is scheduled on that Asset). The
    states role may do what the definition's Tasks call: its worker jobs and the Clarify job
    (createProcessingJob.sync and the rule .sync needs), passing only the worker role and the
    training jobs' role (which has the clarify-job policy) to SageMaker; the shadow model is made by
    the prepare phase with the steps' policy (test_clarify_jobs_...), no Task of the machine does."""
    from mlblueprints import patterns
    from mlblueprints.core.naming import registered_model_asset
    from mlblueprints.stepfunctions import asl, names

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    challenger = registered_model_asset(uc).name
    params = infra.parameters(uc, image_tag="abc")
    assert params["HasExplainability"] == "true" and params["ChallengerAssetName"] == challenger
    none = infra.parameters(uc.model_copy(update={"explainability": None}), image_tag="abc")
    assert none["HasExplainability"] == "false" and none["ChallengerAssetName"] == ""
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    res = template["Resources"]
    machine = res["ExplainabilityStateMachine"]
    assert machine["Condition"] == "Explainability" and template["Conditions"]["Explainability"] == [
        "HasExplainability",
        "true",
    ]
    key = machine["Properties"]["DefinitionS3Location"]["Key"]
    assert key == "${DefinitionsPrefix}/explainability.asl.json"
    assert _resolve(machine["Properties"]["StateMachineName"], params, uc) == names.state_machine_name(
        uc, "explainability"
    )
    # the training machine announces its challenger: publish emits the Asset, its .events state puts it
    training = patterns.declare("training", names.on_aws(uc))
    assert challenger in training.step("publish").emits
    committed = json.loads((ROOT / "statemachines" / uc.name / "training.asl.json").read_text())
    assert any(t["Resource"] == "arn:aws:states:::events:putEvents" for t in _tasks(committed))
    assert patterns.declare("explainability", names.on_aws(uc)).schedule.assets == challenger
    # registered challenger -> explainability
    rule = res["ChallengerToExplainabilityRule"]
    assert rule["Condition"] == "FeaturesAndExplainability"
    assert template["Conditions"]["FeaturesAndExplainability"] == ["Features", "Explainability"]
    assert rule["Properties"]["EventPattern"] == {
        "source": [asl.EVENT_SOURCE],
        "detail-type": [asl.EVENT_DETAIL_TYPE],
        "detail": {"asset": ["ChallengerAssetName"]},
    }
    assert [t["Arn"] for t in rule["Properties"]["Targets"]] == ["ExplainabilityStateMachine"]
    assert ["Explainability", "ExplainabilityStateMachine", "AWS::NoValue"] in _statements(res["EventsRole"])[0][
        "Resource"
    ]
    # what the definition's Tasks call, and the roles they pass
    definition = json.loads((ROOT / "statemachines" / uc.name / "explainability.asl.json").read_text())
    tasks = _tasks(definition)
    resources = {t["Resource"] for t in tasks}
    assert resources == {
        "arn:aws:states:::sagemaker:createProcessingJob.sync",
        "arn:aws:states:::aws-sdk:s3:getObject",
        "arn:aws:states:::aws-sdk:s3:putObject",
        "arn:aws:states:::events:putEvents",
    }
    jobs_ = [t for t in tasks if t["Resource"].endswith("createProcessingJob.sync")]
    clarify = [t for t in jobs_ if "ContainerEntrypoint" not in t["Parameters"]["AppSpecification"]]
    assert len(clarify) == 1 and clarify[0]["Parameters"]["RoleArn"] == "${SageMakerRoleArn}"
    passed = {t["Parameters"]["RoleArn"] for t in tasks if "RoleArn" in t["Parameters"]}
    assert passed == {"${SageMakerRoleArn}", "${WorkerRoleArn}"}
    subs = machine["Properties"]["DefinitionSubstitutions"]
    assert {subs["SageMakerRoleArn"], subs["WorkerRoleArn"]} == {"SageMakerJobRole.Arn", "WorkerRole.Arn"}
    states = {st["Sid"]: st for st in _statements(res["StatesRole"])}
    passable = states["PassTheJobRolesToSageMakerOnly"]["Resource"]
    assert "SageMakerJobRole.Arn" in passable and "WorkerRole.Arn" in passable
    assert states["PassTheJobRolesToSageMakerOnly"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    jobs = states["SageMakerJobs"]
    assert {"sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob"} <= set(
        jobs["Action"]
    )
    assert [r for r in jobs["Resource"] if r.endswith(":processing-job/*")]
    assert any(
        r.endswith("rule/StepFunctionsGetEventsForSageMakerProcessingJobsRule")
        for r in states["SyncRulesStepFunctionsManages"]["Resource"]
    )
    assert states["AssetEvents"]["Action"] == "events:PutEvents"
    assert res["StatesRole"]["Properties"]["ManagedPolicyArns"] == ["PatternStepsPolicy"]  # its S3 reads and writes
    # a Clarify role of another name is one the stack neither makes nor may pass: infra render says so
    other = uc.model_copy(
        update={
            "explainability": uc.explainability.model_copy(
                update={
                    "sagemaker": uc.explainability.sagemaker.model_copy(
                        update={"role_arn": "arn:aws:iam::123456789012:role/clarify-elsewhere"}
                    )
                }
            )
        }
    )
    assert [w for w in infra.warnings(other, image_pushed=True) if "clarify-elsewhere" in w]
    assert not [w for w in infra.warnings(uc, image_pushed=True) if "explainability.sagemaker.role_arn" in w]


def _resolve(text, params, uc):
    """A ``!Sub`` string with the stack's parameters and pseudo parameters."""
    for k, v in {
        **params,
        "AWS::Partition": "aws",
        "AWS::Region": uc.aws.region,
        "AWS::AccountId": uc.aws.account_id,
    }.items():
        text = text.replace("${" + k + "}", str(v))
    return text


def test_the_monitoring_machine_is_started_by_predictions_and_its_drift_alert_starts_training():
    """The loop on Step Functions: the scoring pattern's predictions event starts the monitoring
    machine (as the monitoring DAG is scheduled on it); a drift alert - the drift alarm in ALARM or
    the drift Asset event the monitoring machine's alert step puts - matches the drift rule, whose
    pattern is the one monitoring's publish keeps (``event_pattern``), and which sends it to the
    queue the Airflow watcher reads; the drift Asset event alone starts the training machine. The steps' policy allows the
    alerting calls on exactly the names monitoring/aws.py uses."""
    from mlblueprints.core.naming import drift_alert_asset, predictions_asset
    from mlblueprints.monitoring import aws as ma
    from mlblueprints.stepfunctions import asl

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    params = infra.parameters(uc, image_tag="abc")
    assert params["HasMonitoring"] == "true" and params["PredictionsAssetName"] == predictions_asset(uc).name
    no_monitoring = infra.parameters(uc.model_copy(update={"monitoring": None}), image_tag="abc")
    assert no_monitoring["HasMonitoring"] == "false" and no_monitoring["PredictionsAssetName"] == ""
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    res = template["Resources"]
    # each machine the template makes is a committed definition; monitoring's among them
    machines = {k: v for k, v in res.items() if v["Type"] == "AWS::StepFunctions::StateMachine"}
    keys = {v["Properties"]["DefinitionS3Location"]["Key"].rsplit("/", 1)[-1] for v in machines.values()}
    committed = {p.name for p in (ROOT / "statemachines" / uc.name).glob("*.asl.json")}
    assert "monitoring.asl.json" in keys and keys <= committed
    assert res["MonitoringStateMachine"]["Condition"] == "Monitoring"
    assert template["Conditions"]["Monitoring"] == ["HasMonitoring", "true"]
    # predictions -> monitoring
    rule = res["PredictionsToMonitoringRule"]["Properties"]
    assert rule["EventPattern"] == {
        "source": [asl.EVENT_SOURCE],
        "detail-type": [asl.EVENT_DETAIL_TYPE],
        "detail": {"asset": ["PredictionsAssetName"]},
    }
    assert [t["Arn"] for t in rule["Targets"]] == ["MonitoringStateMachine"]
    starts = _statements(res["EventsRole"])[0]["Resource"]
    assert ["Monitoring", "MonitoringStateMachine", "AWS::NoValue"] in starts
    # drift alert -> the queue and the training machine
    drift = res["DriftAlertRule"]["Properties"]
    pattern = json.loads(_resolve(json.dumps(drift["EventPattern"]), params, uc))
    pattern["$or"][1]["detail"]["asset"] = [params[a] for a in pattern["$or"][1]["detail"]["asset"]]
    assert pattern == ma.event_pattern(uc) and drift_alert_asset(uc).name == params["DriftAssetName"]
    assert drift["Targets"] == [{"Id": "queue", "Arn": "DriftQueue.Arn"}]
    # the training machine is started by the drift Asset event only (the monitoring policy's
    # decision), not also by the alarm the same window may set off: one window, one training run
    retrain = res["DriftToTrainingRule"]
    assert retrain["Condition"] == "FeaturesAndTraining"
    assert retrain["Properties"]["EventPattern"] == {
        "source": [asl.EVENT_SOURCE],
        "detail-type": [asl.EVENT_DETAIL_TYPE],
        "detail": {"asset": ["DriftAssetName"]},
    }
    assert [t["Arn"] for t in retrain["Properties"]["Targets"]] == ["TrainingStateMachine"]
    starting = [
        k
        for k, v in res.items()
        if v["Type"] == "AWS::Events::Rule" and "TrainingStateMachine" in json.dumps(v["Properties"]["Targets"])
    ]
    assert sorted(starting) == ["DriftToTrainingRule", "FeaturesToTrainingRule"]
    assert _resolve(drift["Name"], params, uc) == ma.rule_name(uc)
    # the steps' policy: monitoring's publish may keep the alarms, the rule and the queue it names
    steps = {
        st[1]["Sid"]: st
        for st in res["PatternStepsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if isinstance(st, list)
    }
    for sid in ("DriftMetrics", "DriftAlarms", "DriftRule", "DriftQueueAttributes"):
        assert steps[sid][0] == "Monitoring" and steps[sid][2] == "AWS::NoValue", sid
    metrics = steps["DriftMetrics"][1]["Condition"]["StringEquals"]["cloudwatch:namespace"]
    assert _resolve(metrics, params, uc) == ma.namespace(uc)
    alarm_arn = _resolve(steps["DriftAlarms"][1]["Resource"], params, uc)
    for a in ma.alarm_requests(uc):
        assert re.fullmatch(
            alarm_arn.replace("*", ".*"),
            f"arn:aws:cloudwatch:{uc.aws.region}:{uc.aws.account_id}:alarm:{a['AlarmName']}",
        )
    assert _resolve(steps["DriftRule"][1]["Resource"], params, uc) == ma.rule_arn(uc)
    assert _resolve(steps["DriftQueueAttributes"][1]["Resource"], params, uc) == ma.queue_arn(uc)


def test_the_promotion_steps_may_run_the_endpoint_update_its_alarms_and_approve_packages_by_their_names():
    """The steps' policy allows what serving/aws.py calls, on exactly the names it builds: the
    endpoint, its models and configs, the three rollback alarms, the score-shift metric's
    namespace, the packages of the group; and only when the use case has a promotion section."""
    from mlblueprints.aws import serving as sv
    from mlblueprints.aws import training as tr

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    aws_uc = uc.model_copy(update={"target": "aws"})
    params = infra.parameters(uc, image_tag="abc")
    assert params["HasPromotion"] == "true" and params["EndpointName"] == sv.endpoint_name(aws_uc)
    none = infra.parameters(uc.model_copy(update={"promotion": None}), image_tag="abc")
    assert none["HasPromotion"] == "false" and none["EndpointName"] == ""
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    assert template["Conditions"]["Promotion"] == ["HasPromotion", "true"]
    steps = {
        st[1]["Sid"]: st
        for st in template["Resources"]["PatternStepsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if isinstance(st, list)
    }
    sids = (
        "PromotionEndpoint",
        "PromotionApproval",
        "PromotionAlarms",
        "PromotionScoreShift",
        "EndpointVolumeAndCaptureKey",
    )
    for sid in (*sids, "PassTheModelRoleToTheEndpoint"):
        assert steps[sid][0] == "Promotion" and steps[sid][2] == "AWS::NoValue", sid
    arn = f"arn:aws:sagemaker:{uc.aws.region}:{uc.aws.account_id}"
    endpoint = [_resolve(r, params, uc) for r in steps["PromotionEndpoint"][1]["Resource"]]
    assert f"{arn}:endpoint/{sv.endpoint_name(aws_uc)}" in endpoint
    model = sv.create_model_request(aws_uc, version=3, model_package_arn="p", git_commit="c", run_id="r")
    config = sv.create_endpoint_config_request(aws_uc, version=3, model_name=model["ModelName"])
    for name, kind in ((model["ModelName"], "model"), (config["EndpointConfigName"], "endpoint-config")):
        assert any(re.fullmatch(r.replace("*", ".*"), f"{arn}:{kind}/{name}") for r in endpoint), name
    assert {a.split(":")[1] for a in steps["PromotionEndpoint"][1]["Action"]} >= {
        "CreateModel",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "UpdateEndpoint",
        "DescribeEndpoint",
        "InvokeEndpoint",
    }
    package = _resolve(steps["PromotionApproval"][1]["Resource"], params, uc)
    assert re.fullmatch(package.replace("*", ".*"), f"{arn}:model-package/{tr.model_package_group_name(uc)}/7")
    alarm_arn = _resolve(steps["PromotionAlarms"][1]["Resource"], params, uc)
    for a in sv.alarm_requests(aws_uc):
        assert re.fullmatch(
            alarm_arn.replace("*", ".*"),
            f"arn:aws:cloudwatch:{uc.aws.region}:{uc.aws.account_id}:alarm:{a['AlarmName']}",
        )
    # the endpoint's volume and capture key: SageMaker gets a grant on it when the endpoint is made or updated
    grant = steps["EndpointVolumeAndCaptureKey"][1]
    assert grant["Action"] == "kms:CreateGrant" and grant["Condition"] == {
        "Bool": {"kms:GrantIsForAWSResource": "true"}
    }
    namespace = steps["PromotionScoreShift"][1]["Condition"]["StringEquals"]["cloudwatch:namespace"]
    assert namespace == sv.METRIC_NAMESPACE
    # the machine, started by the Asset its DAG is scheduled on (the fairness gate's judged version)
    from mlblueprints import patterns

    res = template["Resources"]
    assert res["PromotionStateMachine"]["Condition"] == "Promotion"
    key = res["PromotionStateMachine"]["Properties"]["DefinitionS3Location"]["Key"]
    assert key.endswith("/promotion.asl.json") and (ROOT / "statemachines" / uc.name / "promotion.asl.json").exists()
    rule = res["PromotionTriggerRule"]
    assert rule["Condition"] == "FeaturesAndPromotion"
    assert rule["Properties"]["EventPattern"]["detail"] == {"asset": ["PromotionAssetName"]}
    assert [t["Arn"] for t in rule["Properties"]["Targets"]] == ["PromotionStateMachine"]
    [schedule] = [a.name for a in patterns.declare("promotion", aws_uc).assets]
    assert params["PromotionAssetName"] == schedule == f"{uc.name}.model.explained"
    # the states role may make every SageMaker call the machine makes natively, on the names it uses
    definition = (ROOT / "statemachines" / uc.name / "promotion.asl.json").read_text()
    apis = set(re.findall(r"arn:aws:states:::(?:aws-sdk:)?sagemaker:(\w+)", definition))
    assert apis == {"createModel", "createEndpointConfig", "updateEndpoint", "describeEndpoint", "createProcessingJob"}
    states_role = _statements(res["StatesRole"])
    [canary] = [st for st in states_role if st.get("Sid") == "CanaryEndpointUpdate"]
    [raw] = [
        st
        for st in res["StatesRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        if isinstance(st, list) and st[1].get("Sid") == "CanaryEndpointUpdate"
    ]
    assert raw[0] == "Promotion" and raw[2] == "AWS::NoValue"
    allowed = {a.split(":")[1] for a in canary["Action"]}
    assert {a[0].upper() + a[1:] for a in apis - {"createProcessingJob"}} <= allowed
    resources = [_resolve(r, params, uc) for r in canary["Resource"]]
    for name, kind in (
        (model["ModelName"], "model"),
        (config["EndpointConfigName"], "endpoint-config"),
        (sv.endpoint_name(aws_uc), "endpoint"),
    ):
        assert any(re.fullmatch(r.replace("*", ".*"), f"{arn}:{kind}/{name}") for r in resources), name
    passed = [r for st in states_role if st.get("Sid") == "PassTheJobRolesToSageMakerOnly" for r in st["Resource"]]
    assert "SageMakerJobRole.Arn" in passed and model["ExecutionRoleArn"] == uc.aws.iam_role_arn
    # a model role of another name is one the stack neither makes nor may pass: said at render time
    assert not [w for w in infra.warnings(uc, image_pushed=True) if "promotion.sagemaker.role_arn" in w]
    sm_other = uc.promotion.sagemaker.model_copy(update={"role_arn": "arn:aws:iam::123456789012:role/endpoint-models"})
    other = uc.model_copy(update={"promotion": uc.promotion.model_copy(update={"sagemaker": sm_other})})
    assert [w for w in infra.warnings(other, image_pushed=True) if "names endpoint-models" in w]


def _cfn_loader():
    class Loader(yaml.SafeLoader):
        pass

    def any_tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)

    Loader.add_multi_constructor("!", any_tag)
    return Loader


def test_the_scoring_machine_is_started_as_scoring_schedule_says():
    """``scoring.schedule`` on Step Functions: ``features`` - a feature execution that succeeded (its
    status event; the worker reads the view events that execution emitted); ``gold`` - the rows'
    Gold Asset event; a cron - an EventBridge Scheduler schedule whose runs carry their scheduled
    time. Exactly one of them per use case, and the roles that start the machine may start it."""
    from moto.events.models import EventPattern

    from mlblueprints.core.naming import table_asset
    from mlblueprints.stepfunctions import asl, names, worker

    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    res, conditions = template["Resources"], template["Conditions"]
    by_trigger = {
        "features": ("FeaturesToScoringRule", "ScoringOnFeatures"),
        "gold": ("GoldToScoringRule", "ScoringOnGold"),
        "schedule": ("ScoringSchedule", "ScoringScheduled"),
    }
    for resource, condition in by_trigger.values():
        assert res[resource]["Condition"] == condition
    assert set(template["Parameters"]["ScoringTrigger"]["AllowedValues"]) == {"", *by_trigger}
    # the parameters, per scoring.schedule
    params = infra.parameters(uc, image_tag="abc")
    assert (params["ScoringTrigger"], params["ScoringGoldAssetName"], params["ScoringScheduleExpression"]) == (
        "features",
        "",
        "",
    )
    on_gold = uc.model_copy(update={"scoring": uc.scoring.model_copy(update={"schedule": "gold"})})
    p = infra.parameters(on_gold, image_tag="abc")
    gold = table_asset(names.on_aws(on_gold), on_gold.scoring_rows()["source"]).name
    assert (p["ScoringTrigger"], p["ScoringGoldAssetName"]) == ("gold", gold)
    on_cron = uc.model_copy(update={"scoring": uc.scoring.model_copy(update={"schedule": "30 6 * * 1-5"})})
    p = infra.parameters(on_cron, image_tag="abc")
    assert (p["ScoringTrigger"], p["ScoringScheduleExpression"]) == ("schedule", "cron(30 6 ? * 2-6 *)")
    p = infra.parameters(uc.model_copy(update={"scoring": None}), image_tag="abc")
    assert (p["HasScoring"], p["ScoringTrigger"]) == ("false", "")
    assert conditions["ScoringOnFeatures"][2] == ["ScoringTrigger", "features"]
    assert conditions["ScoringOnGold"][2] == ["ScoringTrigger", "gold"]
    assert conditions["ScoringScheduled"][1] == ["ScoringTrigger", "schedule"]
    # features: the status event of a features execution that succeeded, matched as EventBridge matches it
    rule = res["FeaturesToScoringRule"]["Properties"]
    assert [t["Arn"] for t in rule["Targets"]] == ["ScoringStateMachine"]
    machine = (
        f"arn:aws:states:{uc.aws.region}:{uc.aws.account_id}:stateMachine:{names.state_machine_name(uc, 'features')}"
    )
    pattern = json.loads(json.dumps(rule["EventPattern"]).replace('"FeaturesStateMachine"', json.dumps(machine)))
    assert pattern["detail-type"] == [worker.STATUS_DETAIL_TYPE]
    event = {
        "id": "1",
        "account": uc.aws.account_id,
        "region": uc.aws.region,
        "time": "2024-03-06T00:00:00Z",
        "resources": [],
        "source": "aws.states",
        "detail-type": worker.STATUS_DETAIL_TYPE,
        "detail": {"stateMachineArn": machine, "name": "f-1", "status": "SUCCEEDED"},
    }
    matcher = EventPattern.load(json.dumps(pattern))  # moto's EventBridge matching (it has no TestEventPattern)
    assert matcher.matches_event(event)
    assert not matcher.matches_event({**event, "detail": {**event["detail"], "status": "FAILED"}})
    assert not matcher.matches_event({**event, "detail": {**event["detail"], "stateMachineArn": machine + "-other"}})
    # gold: the rows' Gold Asset event
    rule = res["GoldToScoringRule"]["Properties"]
    assert rule["EventPattern"] == {
        "source": [asl.EVENT_SOURCE],
        "detail-type": [asl.EVENT_DETAIL_TYPE],
        "detail": {"asset": ["ScoringGoldAssetName"]},
    }
    assert [t["Arn"] for t in rule["Targets"]] == ["ScoringStateMachine"]
    # a cron: the schedule hands its scheduled time, from which the worker takes the interval
    target = res["ScoringSchedule"]["Properties"]["Target"]
    assert target["Arn"] == "ScoringStateMachine" and target["RoleArn"] == "SchedulerRole.Arn"
    assert json.loads(target["Input"]) == {"scheduled_time": "<aws.scheduler.scheduled-time>"}
    assert res["ScoringSchedule"]["Properties"]["ScheduleExpression"] == "ScoringScheduleExpression"
    # who may start it
    assert ["Scoring", "ScoringStateMachine", "AWS::NoValue"] in _statements(res["EventsRole"])[0]["Resource"]
    assert res["SchedulerRole"]["Condition"] == "AnySchedule"
    assert _statements(res["SchedulerRole"])[0]["Resource"] == [
        ["Scheduled", "LakehouseStateMachine", "AWS::NoValue"],
        ["ScoringScheduled", "ScoringStateMachine", "AWS::NoValue"],
    ]
