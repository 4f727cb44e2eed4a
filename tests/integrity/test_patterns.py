"""The pattern kit: every declaration renders to the DAG it declares, the target is chosen in one
place, the layers import only downward, and the local run exercises what aws sends."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from mlblueprints import backends, patterns
from mlblueprints.config import parse_usecase
from mlblueprints.core.naming import AssetSpec
from mlblueprints.patterns import PatternSpec, Schedule, Step

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "include" / "mlblueprints"


def _usecase(target: str):
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["target"] = target
    data["gold"]["transaction_features"]["sql"] = str(
        ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
    )
    assert data["explainability"]["facets"]  # the shipped section renders every pattern
    return parse_usecase(data)


def _condition_names(cond) -> list[str]:
    if cond is None:
        return []
    if hasattr(cond, "objects"):
        return [n for o in cond.objects for n in _condition_names(o)]
    return [cond.name]


@pytest.mark.parametrize("target", ["local", "aws"])
@pytest.mark.parametrize("pattern", patterns.PATTERNS)
def test_each_declaration_renders_to_the_dag_it_declares(pattern, target):
    """Tasks, edges, Assets, Params and schedule of the DAG are those of the declaration - on aws
    with each delegated service step as prepare -> the provider's operator -> finish."""
    from mlblueprints.airflow.builder import build_dag

    uc = _usecase(target)
    spec = patterns.declare(pattern, uc)
    dag = build_dag(spec, uc)
    t = dag.task_dict
    assert dag.dag_id == spec.dag_id == f"fraud_detection__{pattern}"
    assert set(dag.params.keys()) == {p.name for p in spec.params}
    assert sorted(dag.tags) == sorted(spec.tags)
    first, last = {}, {}
    for step in spec.steps:
        delegated = bool(step.service) and backends.delegates(uc, step.capability, **dict(step.backend_key))
        assert delegated == (target == "aws" and step.service is not None), step.id
        if delegated:
            ids = [f"{step.id}.prepare", f"{step.id}.{step.service}", f"{step.id}.finish"]
            assert t[ids[0]].downstream_task_ids == {ids[1]} and t[ids[1]].downstream_task_ids == {ids[2]}
            assert not t[ids[0]].outlets and not t[ids[1]].outlets
            first[step.id], last[step.id] = t[ids[0]], t[ids[2]]
        else:
            first[step.id] = last[step.id] = t[step.id]
        assert sorted(a.name for a in last[step.id].outlets) == sorted(step.emits), step.id
        assert last[step.id].trigger_rule == step.trigger_rule or delegated
        if step.retries is not None:
            assert last[step.id].retries == step.retries
    # every declared edge, and no other edge between steps
    for step in spec.steps:
        want = {last[u].task_id for u in step.upstream()}
        got = {u for u in first[step.id].upstream_task_ids}
        assert got == want, (step.id, got, want)
    expected_tasks = sum(3 if last[s.id] is not first[s.id] else 1 for s in spec.steps)
    assert len(dag.tasks) == expected_tasks
    # schedule: the declared Assets (or the cron interval)
    if spec.schedule.assets is not None:
        assert sorted(_condition_names(dag.timetable.asset_condition)) == sorted(spec.consumed)
    else:
        from airflow.timetables.interval import CronDataIntervalTimetable

        assert dag.timetable == CronDataIntervalTimetable(spec.schedule.cron, timezone="UTC")
    declared = {a.name: a.uri for a in spec.assets}
    for task in dag.tasks:
        for a in task.outlets:
            assert declared[a.name] == a.uri


@pytest.mark.parametrize("pattern", patterns.PATTERNS)
def test_every_step_declares_the_type_of_its_result(pattern):
    """What a step hands on is typed (mlblueprints.core.results) and checked by both orchestrators."""
    from mlblueprints.core import results
    from mlblueprints.core.service import resolve

    spec = patterns.declare(pattern, _usecase("local"))
    for step in spec.steps:
        assert step.result, f"{spec.dag_id}: step {step.id} declares no result type"
        assert step.result.startswith("mlblueprints.core.results:"), step.result
        results._adapter(step.result)  # resolves, and pydantic can validate it
        assert resolve(step.result) is not None


def test_a_result_missing_a_key_fails_its_step_naming_the_key():
    from mlblueprints.core.results import StepResultError, check

    gold = {"table": "t", "recomputed": ["2024-03-01", "2024-03-02"], "rows_written": 10}
    assert check("gold__t", "mlblueprints.core.results:GoldResult", gold) is gold
    with pytest.raises(StepResultError) as err:
        check("gold__t", "mlblueprints.core.results:GoldResult", {"table": "t", "rows_written": "many"})
    assert "step gold__t returned a result that is not a GoldResult" in str(err.value)
    assert "recomputed: Field required" in str(err.value) and "rows_written" in str(err.value)
    # a step that may skip: either shape passes, anything else does not
    assert check("compact", "mlblueprints.core.results:CompactStep", {"skipped": True})
    with pytest.raises(StepResultError):
        check("compact", "mlblueprints.core.results:CompactStep", {"tabels": {}})


def test_a_declaration_with_a_dangling_edge_a_cycle_or_an_undeclared_asset_is_refused():
    asset = AssetSpec("uc.a", "file://mlblueprints/uc/a", "g")

    def spec(*steps: Step, assets=(asset,), schedule=Schedule()) -> PatternSpec:
        return PatternSpec("p", "uc", "", "", schedule, tuple(steps), assets=assets)

    ok = spec(Step("a", "m:f"), Step("b", "m:f", inputs={"x": "a"}, emits=("uc.a",)))
    assert ok.validate().topological_order() == ["a", "b"]
    with pytest.raises(ValueError, match="unknown step 'nope'"):
        spec(Step("a", "m:f", after=("nope",))).validate()
    with pytest.raises(ValueError, match="cycle"):
        spec(Step("a", "m:f", after=("b",)), Step("b", "m:f", after=("a",))).validate()
    with pytest.raises(ValueError, match="undeclared Asset 'uc.z'"):
        spec(Step("a", "m:f", emits=("uc.z",))).validate()
    with pytest.raises(ValueError, match="schedule names undeclared Asset"):
        spec(Step("a", "m:f"), schedule=Schedule(assets=("all", "uc.a", "uc.q"))).validate()
    with pytest.raises(ValueError, match="used twice"):
        spec(Step("a", "m:f"), Step("a", "m:g")).validate()
    with pytest.raises(ValueError, match="names no capability"):
        spec(Step("a", "m:f", service="athena")).validate()


def test_the_target_is_chosen_in_one_place():
    """Only ``mlblueprints.backends`` (and config, which validates and locates data) asks which
    target a use case is on."""
    asks = re.compile(r'[=!]=\s*"(aws|local)"|"(aws|local)"\s*[=!]=|view_target\(|\.target\s*(==|!=|in\b)')
    offenders = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).as_posix()
        if rel in ("backends.py", "config.py"):
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if asks.search(line.split("#", 1)[0]):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def _module_name(p: Path) -> str:
    rel = p.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(p: Path, name: str) -> set[str]:
    """Modules imported when ``p`` is imported (module level only; imports inside functions run later)."""
    out = set()
    tree = ast.parse(p.read_text())
    for node in tree.body:
        nodes = [node]
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks do not run
            continue
        if isinstance(node, ast.Try):
            nodes = node.body
        for n in nodes:
            if isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module:
                base = n.module
                if n.level:
                    base = ".".join(name.split(".")[: -n.level] + [n.module])
                out.add(base)
                out |= {f"{base}.{a.name}" for a in n.names}
    return {m for m in out if m.startswith("mlblueprints")}


def test_no_import_cycle_in_the_package():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _top_level_imports(p, m) if i in modules and i != m} for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n) :] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_airflow_package_is_rendering_and_glue():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PKG / "airflow").glob("*.py")}
    assert max(sizes.values()) <= 400, sizes
    assert sorted(sizes) == ["__init__.py", "builder.py", "localrun.py", "operators.py", "runtime.py"]


def test_local_runs_pass_the_hyperparameters_an_aws_job_gets(tmp_path):
    """One codec: the local job's hyperparameters.json holds, byte for byte, the strings the
    CreateTrainingJob request carries (the container's own ``sagemaker_*`` entries aside)."""
    from mlblueprints.aws import training as tr
    from mlblueprints.training.core import hyperparameters
    from mlblueprints.training.local import training_env, write_input_config

    uc = _usecase("aws")
    hps = hyperparameters(uc)
    local = write_input_config(tmp_path / "config", hps)
    on_disk = json.loads((tmp_path / "config" / "hyperparameters.json").read_text())
    request = tr.create_training_job_request(
        uc,
        job_name=tr.training_job_name(uc, "r", 1),
        train_s3_uri="s3://b/train/",
        source_s3_uri="s3://b/code/sourcedir.tar.gz",
        output_s3_uri="s3://b/out",
        checkpoint_s3_uri="s3://b/ckpt/",
        hyperparameters=hps,
        git_commit="abc",
    )
    sent = {k: v for k, v in request["HyperParameters"].items() if not k.startswith("sagemaker_")}
    assert on_disk == local == sent
    env = training_env(tmp_path, tmp_path, hps, tmp_path / "ckpt")
    assert json.loads(env["SM_HPS"]) == tr.decode_hyperparameters(sent) == {**hps}
