"""The endpoint capability on the aws target: a SageMaker real-time endpoint, its canary a
blue/green update with SageMaker's deployment guardrails (docs/serving.md).

* ``deploy`` of one variant makes the endpoint serve that version alone: CreateModel from the
  version's model package, CreateEndpointConfig (data capture, KMS), CreateEndpoint or an
  all-at-once UpdateEndpoint, then waits for InService. The first version, and a rollback the
  bake judged after SageMaker finished, go this way.
* ``canary`` is one UpdateEndpoint to the challenger's config with a ``BlueGreenUpdatePolicy``
  (CANARY at the canary weight, or LINEAR steps; ``WaitIntervalInSeconds`` the bake) and
  ``AutoRollbackConfiguration`` on the CloudWatch alarms it creates (5xx rate, model latency
  p99, score shift), handed to the orchestrator as a service call (``sagemaker_endpoint``: the
  challenger's CreateModel and CreateEndpointConfig and the UpdateEndpoint, native integrations
  in a state machine). While SageMaker shifts traffic, :meth:`AwsEndpoint.canary_traffic` (the
  call's ``during`` work) sends the challenger's holdout rows to the endpoint at the configured
  rate (``InferenceId`` the row, so labels join), reads the data capture of both fleets (each
  config captures under its own prefix) and publishes the score shift of the challenger's fleet
  against the champion's to the metric its alarm watches, until SageMaker finishes;
  :meth:`AwsEndpoint.resume_canary` judges the end: the challenger's config in service (every
  alarm held) or the champion's again (an alarm fired; its name and reason are the verdict). The
  guardrails no alarm can judge (``min_requests``, the ROC-AUC drop on labelled requests) are
  judged on the capture afterwards; ``decide`` rolls back with an all-at-once update when they
  fail.

With ``promotion.sagemaker.canary_mode: variant_weights`` the canary is the local endpoint's
instead (``serving.canary.by_weights``): champion and challenger as two production variants of one
config, each share set by UpdateEndpointWeightsAndCapacities, each request judged as the variant
that answered it (``InvokedProductionVariant``) - status, round-trip latency, score.

Not the provider's ``SageMakerEndpointOperator``: the bake must send traffic and publish the
score-shift metric while the update runs, which a deferred wait leaves undone.

A rerun of a killed run adopts the update its try started (the endpoint is Updating to the
challenger's config, or already serves it): its prepare phase hands over nothing to create or
start. The deployment history
is one JSON object per deployment under ``<prefix>/serving/deployments/`` (SSE-KMS).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mlblueprints.aws import s3io
from mlblueprints.aws import serving as req
from mlblueprints.aws import training as tr
from mlblueprints.aws.requests import split_s3_uri
from mlblueprints.config import UseCase
from mlblueprints.errors import PermanentError
from mlblueprints.serving.canary import CHALLENGER, CHAMPION, bake_entry, log_verdicts
from mlblueprints.serving.state import IN_PROGRESS, OUTCOMES, now_iso

log = logging.getLogger(__name__)


class S3DeploymentHistory:
    """The deployment history of the aws target (the interface of ``DeploymentState``'s
    deployments): one object per deployment, ``<id:08d>.json``."""

    def __init__(self, uc: UseCase, s3: Any):
        assert uc.aws is not None
        self.aws = uc.aws
        self.s3 = s3
        self.uri = uc.aws.s3_uri("serving", "deployments")

    def _keys(self) -> list[str]:
        bucket, prefix = split_s3_uri(self.uri + "/")
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]
        return sorted(keys)

    def _put(self, d: Mapping[str, Any]) -> None:
        body = json.dumps(d, indent=1, sort_keys=True, default=str).encode()
        s3io.put_bytes(self.s3, body, f"{self.uri}/{int(d['id']):08d}.json", self.aws, "application/json")

    def deployments(self) -> list[dict[str, Any]]:
        bucket = split_s3_uri(self.uri)[0]
        return [json.loads(self.s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in self._keys()]

    def deployment(self, run_id: str) -> dict[str, Any] | None:
        return next((d for d in reversed(self.deployments()) if d["run_id"] == run_id), None)

    def start_deployment(
        self, run_id: str, version: int, previous: int | None, commit: str | None, committed_at: str | None
    ) -> dict[str, Any]:
        rows = self.deployments()
        now = now_iso()
        for d in rows:
            if d["outcome"] == IN_PROGRESS and d["run_id"] != run_id:
                d.update(outcome="superseded", finished_at=now, reason=f"replaced by the promotion run {run_id}")
                self._put(d)
        mine = next((d for d in reversed(rows) if d["run_id"] == run_id and d["outcome"] == IN_PROGRESS), None)
        if mine is None:
            mine = {
                "id": max((int(d["id"]) for d in rows), default=0) + 1,
                "run_id": run_id,
                "version": int(version),
                "previous_version": previous,
                "git_commit": commit,
                "committed_at": committed_at,
                "started_at": now,
                "finished_at": None,
                "outcome": IN_PROGRESS,
                "reason": None,
                "shares": None,
                "guardrails": None,
            }
            self._put(mine)
        return mine

    def finish_deployment(
        self, deployment_id: int, outcome: str, reason: str, shares: Sequence[float], guardrails: Any
    ) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        d = next(d for d in self.deployments() if int(d["id"]) == int(deployment_id))
        d.update(outcome=outcome, reason=reason, finished_at=now_iso(), shares=list(shares), guardrails=guardrails)
        self._put(json.loads(json.dumps(d, default=str)))


class AwsEndpoint:
    POLL_SECONDS = 15.0  # DescribeEndpoint while an endpoint is created or updated

    def __init__(self, uc: UseCase, rt: Any):
        if uc.promotion is None or uc.aws is None or uc.training is None:
            raise PermanentError(f"{uc.name}: a SageMaker endpoint needs the promotion, training and aws sections")
        self.uc = uc
        self.rt = rt
        self.opts = uc.promotion
        self.name = req.endpoint_name(uc)
        self.generation = 0  # of the variant-weights form: each deploy of a bake
        self.observed: list[dict[str, Any]] = []  # every request this endpoint object sent, as answered

    # ------------------------------------------------------------------ the endpoint

    def _sm(self) -> Any:
        return self.rt.client("sagemaker")

    def describe(self) -> dict[str, Any] | None:
        try:
            return self._sm().describe_endpoint(EndpointName=self.name)
        except Exception as exc:
            if s3io.error_code(exc) in ("ValidationException", "ResourceNotFound"):
                return None
            raise

    def ensure_running(self) -> dict[str, Any]:
        """Where the endpoint is (it is created by the first ``deploy``: nothing to serve before)."""
        d = self.describe()
        state = d["EndpointStatus"] if d else "not created yet"
        return {"url": f"SageMaker endpoint {self.name} ({state})", "pid": None, "generation": self._generation(d)}

    @staticmethod
    def _generation(d: Mapping[str, Any] | None) -> int:
        """The endpoint's state as a number: its last modification, in epoch seconds (a datetime
        from boto3, ISO text from an orchestrator's serialized output)."""
        t = (d or {}).get("LastModifiedTime")
        if isinstance(t, str):
            try:
                t = datetime.fromisoformat(t)
            except ValueError:
                return 0
        return int(t.timestamp()) if isinstance(t, datetime) else 0

    def _package(self, version: int) -> str:
        from mlblueprints.registry.aws import find_model_package

        found = find_model_package(self._sm(), tr.model_package_group_name(self.uc), self.uc.model_name, int(version))
        if found is None:
            raise PermanentError(
                f"{self.uc.name}: {self.uc.model_name} version {version} has no SageMaker model package "
                f"(group {tr.model_package_group_name(self.uc)}): register it on the aws target"
            )
        return str(found["ModelPackageArn"])

    def config_for(self, version: int, run_id: str, git_commit: str = "") -> str:
        """The endpoint config serving ``version`` alone (its model and config created unless a
        try made them: the names are hashes of the requests)."""
        sm = self._sm()
        model, config = self._requests_for(version, run_id, git_commit)
        if not req.exists(sm.describe_model, ModelName=model["ModelName"]):
            sm.create_model(**model)
            log.info("created model %s from %s", model["ModelName"], model["PrimaryContainer"]["ModelPackageName"])
        name = config["EndpointConfigName"]
        if not req.exists(sm.describe_endpoint_config, EndpointConfigName=name):
            sm.create_endpoint_config(**config)
            log.info("created endpoint config %s (capture: %s)", name, config["DataCaptureConfig"]["DestinationS3Uri"])
        return name

    def wait(self, what: str) -> dict[str, Any]:
        """DescribeEndpoint until it leaves Creating/Updating (at most ``wait_seconds``)."""
        deadline = time.monotonic() + self.opts.sagemaker.wait_seconds
        while True:
            d = self.describe()
            if d is None:
                raise PermanentError(f"{self.uc.name}: endpoint {self.name} disappeared while {what}")
            if d["EndpointStatus"] not in req.UPDATING:
                break
            if time.monotonic() > deadline:
                raise PermanentError(
                    f"{self.uc.name}: endpoint {self.name} still {d['EndpointStatus']} after "
                    f"{self.opts.sagemaker.wait_seconds}s ({what}; promotion.sagemaker.wait_seconds)"
                )
            time.sleep(self.POLL_SECONDS)
        if d["EndpointStatus"] != "InService":
            raise PermanentError(
                f"{self.uc.name}: endpoint {self.name} is {d['EndpointStatus']} after {what}: {d.get('FailureReason')}"
            )
        return d

    def serving(self) -> list[dict[str, Any]]:
        """The version the endpoint serves (the model tags of its config)."""
        d = self.describe()
        if d is None:
            return []
        sm = self._sm()
        cfg = sm.describe_endpoint_config(EndpointConfigName=d["EndpointConfigName"])
        out = []
        for v in cfg["ProductionVariants"]:
            model = sm.describe_model(ModelName=v["ModelName"])
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=model["ModelArn"]).get("Tags", [])}
            out.append(
                {"variant": v["VariantName"], "version": int(tags.get("mlblueprints:model-version", 0)), "weight": 1.0}
            )
        return out

    def deploy(self, variants: Sequence[Mapping[str, Any]], by: str) -> int:
        """The endpoint serving one version alone (created, or updated all at once), InService."""
        if len(variants) != 1:
            if self.opts.sagemaker.canary_mode != "variant_weights":
                raise PermanentError(
                    f"{self.uc.name}: the SageMaker endpoint serves one production variant in the blue_green "
                    "canary mode; several variants need promotion.sagemaker.canary_mode: variant_weights"
                )
            return self._deploy_weighted(variants, by)
        [v] = variants
        config = self.config_for(int(v["version"]), by)
        sm = self._sm()
        d = self.describe()
        if d is not None and d["EndpointStatus"] in req.UPDATING:
            d = self.wait("an earlier update finished")
        if d is None:
            sm.create_endpoint(**req.create_endpoint_request(self.uc, config_name=config))
            log.info("creating endpoint %s with %s", self.name, config)
        elif d["EndpointConfigName"] != config:
            sm.update_endpoint(**req.replace_endpoint_request(self.uc, config_name=config))
            log.info("updating endpoint %s to %s (all at once)", self.name, config)
        return self._generation(self.wait(f"serving {config}"))

    def _deploy_weighted(self, variants: Sequence[Mapping[str, Any]], by: str) -> int:
        """Champion and challenger as two production variants (named by their role) of one config,
        each its version's model; the endpoint moved to that config (all at once) when it serves
        another, then the variants' weights set by UpdateEndpointWeightsAndCapacities. Returns a
        new generation: the requests sent from now on are judged as this share's."""
        sm = self._sm()
        models = []
        for v in variants:
            arn = self._package(int(v["version"]))
            model = req.create_model_request(
                self.uc, version=int(v["version"]), model_package_arn=arn, git_commit="", run_id=by
            )
            if not req.exists(sm.describe_model, ModelName=model["ModelName"]):
                sm.create_model(**model)
            models.append((str(v["variant"]), model["ModelName"], float(v["weight"])))
        top = max(int(v["version"]) for v in variants)
        config = req.create_endpoint_config_request(self.uc, version=top, model_name="", variants=models)
        name = config["EndpointConfigName"]
        if not req.exists(sm.describe_endpoint_config, EndpointConfigName=name):
            sm.create_endpoint_config(**config)
        d = self.describe()
        if d is not None and d["EndpointStatus"] in req.UPDATING:
            d = self.wait("an earlier update finished")
        if d is None:
            raise PermanentError(f"{self.uc.name}: endpoint {self.name} does not exist: no champion is deployed on it")
        if d["EndpointConfigName"] != name:
            sm.update_endpoint(**req.replace_endpoint_request(self.uc, config_name=name))
            log.info("updating endpoint %s to %s (champion and challenger variants)", self.name, name)
            d = self.wait(f"serving {name}")
        wanted = {n: w for n, _, w in models}
        current = {v["VariantName"]: v.get("CurrentWeight") for v in d.get("ProductionVariants", [])}
        if any(current.get(n) is None or abs(float(current[n]) - w) > 1e-9 for n, w in wanted.items()):
            sm.update_endpoint_weights_and_capacities(**req.weights_request(self.uc, wanted))
            log.info("endpoint %s weights: %s", self.name, wanted)
            self.wait("the new weights")
        self.generation += 1
        return self.generation

    def captures(self, generation: int) -> list[dict[str, Any]]:
        """The requests this endpoint object sent while ``generation`` was served, as answered:
        the variant that answered (``InvokedProductionVariant``), status, round-trip latency and
        score - the variant-weights form's guardrails are judged on them."""
        return [o for o in self.observed if o["generation"] == generation]

    def deployments(self) -> S3DeploymentHistory:
        return S3DeploymentHistory(self.uc, self.rt.client("s3"))

    # ------------------------------------------------------------------ the canary

    def canary(self, registry: Any, version: int, champion: int, run_id: str) -> Any:
        """The blue/green update to ``version`` with SageMaker's guardrails (module docstring), as a
        service call: the orchestrator creates the challenger's model and config and starts the
        update (native ``createModel``, ``createEndpointConfig``, ``updateEndpoint`` in a state
        machine), runs :meth:`canary_traffic` while it waits for the update to end, and
        :meth:`resume_canary` judges the one bake. This phase checks the endpoint, keeps the
        alarms, and says what is left to do: nothing a killed try made is made again."""
        if self.opts.sagemaker.canary_mode == "variant_weights":
            from mlblueprints.serving.canary import by_weights

            return by_weights(self, registry, version, champion, run_id)
        from mlblueprints.core import service

        uc, p = self.uc, self.opts
        sm, cw = self._sm(), self.rt.client("cloudwatch")
        blue = self.config_for(champion, run_id)
        model, config = self._requests_for(version, run_id)
        green = config["EndpointConfigName"]
        names = req.alarm_names(uc)
        mine = self.deployments().deployment(run_id)
        since = datetime.fromisoformat(mine["started_at"]) if mine else datetime.now(UTC)
        d = self.describe()
        if d is None:
            raise PermanentError(f"{uc.name}: endpoint {self.name} does not exist: no champion is deployed on it")
        pending = (d.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        if d["EndpointStatus"] in req.UPDATING and pending not in (None, green):
            # another update (a superseded run's) is under way: SageMaker finishes it first
            log.info("endpoint %s is updating to %s: waiting for it before the canary", self.name, pending)
            d = self.wait(f"the update to {pending} finished")
        # an update of this deployment that ended already (a killed try's, rolled back) is judged,
        # not started again
        start = d["EndpointConfigName"] == blue and req.update_state(d, green, since.isoformat()) == "not started"
        if not start and d["EndpointConfigName"] != green and d["EndpointStatus"] not in req.UPDATING:
            raise PermanentError(
                f"{uc.name}: endpoint {self.name} serves {d['EndpointConfigName']}, neither the champion's config "
                f"({blue}) nor the challenger's ({green}): redeploy the champion first"
            )
        for alarm in req.alarm_requests(uc):  # as configured now, also for an update a killed try started
            cw.put_metric_alarm(**alarm)
        if start:
            for name in names.values():  # a new canary is judged afresh, not on the state a former one left
                cw.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="a canary starts")
            log.info(
                "blue/green update of %s to %s: %s, bake %ss per step, rolled back on %s",
                self.name,
                green,
                req.traffic_routing(uc)["Type"],
                int(p.canary.bake_seconds),
                ", ".join(names.values()),
            )
        else:
            log.info("adopting the update of %s a former try started (%s)", self.name, d["EndpointStatus"])
        longest = p.sagemaker.max_execution_timeout_seconds + p.sagemaker.wait_seconds
        request = {
            "EndpointName": self.name,
            "Model": None if req.exists(sm.describe_model, ModelName=model["ModelName"]) else model,
            "EndpointConfig": None if req.exists(sm.describe_endpoint_config, EndpointConfigName=green) else config,
            "Update": (
                req.update_endpoint_request(uc, config_name=green, alarms=list(names.values())) if start else None
            ),
            "StartedAt": since.isoformat(),
            "PollSeconds": max(1, int(self.POLL_SECONDS)),
            "MaxPolls": int(longest // max(1, int(self.POLL_SECONDS))) + 1,
        }
        state = {
            "blue": blue,
            "green": green,
            "since": since.isoformat(),
            "version": int(version),
            "champion": int(champion),
            "run_id": run_id,
        }
        return service.ServiceCall(
            service.SAGEMAKER_ENDPOINT, request, "endpoint", "resume_canary", state, during="canary_traffic"
        )

    def _requests_for(self, version: int, run_id: str, git_commit: str = "") -> tuple[dict, dict]:
        """CreateModel and CreateEndpointConfig of the config serving ``version`` alone."""
        model = req.create_model_request(
            self.uc, version=version, model_package_arn=self._package(version), git_commit=git_commit, run_id=run_id
        )
        config = req.create_endpoint_config_request(self.uc, version=version, model_name=model["ModelName"])
        return model, config

    def canary_traffic(self, state: Mapping[str, Any], ready: Any = lambda: None) -> dict[str, Any]:
        """While SageMaker shifts traffic: the challenger's holdout rows sent to the endpoint, both
        fleets' captures read, the score shift published to the metric its alarm watches; until
        the endpoint leaves Updating. ``ready()`` once the rows are loaded (a state machine starts
        the update then, so the traffic is there from its first second); the update is waited for
        (at most ``wait_seconds``). Returns what was sent and the labels of the rows."""
        from mlblueprints.backends import backend_for

        p = self.opts
        cw = self.rt.client("cloudwatch")
        registry = backend_for(self.uc, "registry", self.rt)
        records, labels = self.replay_records(registry, int(state["version"]))
        since = datetime.fromisoformat(state["since"])
        ready()
        started_by = time.monotonic() + p.sagemaker.wait_seconds
        while req.update_state(self.describe() or {}, state["green"], state["since"]) == "not started":
            if time.monotonic() > started_by:
                raise PermanentError(
                    f"{self.uc.name}: the update of {self.name} to {state['green']} did not start within "
                    f"{p.sagemaker.wait_seconds}s (promotion.sagemaker.wait_seconds)"
                )
            time.sleep(self.POLL_SECONDS)
        sent_total: dict[str, Any] = {"requests": 0, "statuses": {}, "seconds": 0.0}
        deadline = time.monotonic() + p.sagemaker.max_execution_timeout_seconds + p.sagemaker.wait_seconds
        while (self.describe() or {}).get("EndpointStatus") in req.UPDATING:
            if time.monotonic() > deadline:
                raise PermanentError(f"{self.uc.name}: the blue/green update of {self.name} did not end in time")
            left = p.traffic.max_requests - sent_total["requests"]
            if records and left > 0:
                sent = self.send(records, p.sagemaker.publish_seconds, left, offset=sent_total["requests"])
                sent_total["requests"] += sent["requests"]
                sent_total["seconds"] = round(sent_total["seconds"] + sent["seconds"], 3)
                for k, n in sent["statuses"].items():
                    sent_total["statuses"][k] = sent_total["statuses"].get(k, 0) + n
            else:
                time.sleep(min(p.sagemaker.publish_seconds, self.POLL_SECONDS))
            by, verdicts = self._judge(state["blue"], state["green"], since, labels)
            self._publish(cw, by, verdicts)
        return {"sent": sent_total, "labels": labels}

    def resume_canary(self, state: Mapping[str, Any], output: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The bake judged once SageMaker is done: the challenger's config in service (every alarm
        held), or the champion's again (an alarm fired: its name and reason are the verdict); the
        guardrails no alarm judges on the captures."""
        d = dict(output.get("Endpoint") or {})
        during = dict(output.get("During") or {})
        sent = during.get("sent") or {"requests": 0, "statuses": {}, "seconds": 0.0}
        labels = {k: int(v) for k, v in (during.get("labels") or {}).items()}
        names = req.alarm_names(self.uc)
        since = datetime.fromisoformat(state["since"])
        by, verdicts = self._judge(state["blue"], state["green"], since, labels)
        in_alarm = self._alarms_in_alarm(self.rt.client("cloudwatch"), names)
        verdicts = self._with_alarms(verdicts, names, in_alarm)
        entry = bake_entry(self._share(), self._generation(d), sent, by, verdicts)
        if d.get("EndpointConfigName") != state["green"] or d.get("EndpointStatus") != "InService":
            why = [f"{g}: CloudWatch alarm {a} in ALARM ({reason})" for g, (a, reason) in in_alarm.items()]
            entry["tripped"] = why or [
                f"SageMaker rolled the update back: {d.get('FailureReason') or d.get('EndpointStatus')}"
            ]
        log_verdicts(verdicts)
        return [entry]

    def _share(self) -> float:
        c = self.opts.canary
        return c.steps[0] if c.steps else c.weight

    def _judge(
        self, blue: str, green: str, since: datetime, labels: Mapping[Any, int]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from mlblueprints.serving import guardrails

        caps = [*self.captures_of(blue, CHAMPION, since), *self.captures_of(green, CHALLENGER, since)]
        by = guardrails.samples(caps)
        verdicts = guardrails.evaluate(self.opts.guardrails, by, CHAMPION, CHALLENGER, labels)
        return by, verdicts

    def _publish(self, cw: Any, by: Mapping[str, Any], verdicts: Sequence[Mapping[str, Any]]) -> None:
        """The score shift of every capture so far, to the metric its alarm watches, once each
        side has ``publish_min_scores`` scores (the alarm fires on one datapoint: an estimate from
        a few scores would roll back a good challenger on noise)."""
        least = min(len(by.get(v, {}).get("scored", [])) for v in (CHAMPION, CHALLENGER))
        if least < self.opts.sagemaker.publish_min_scores:
            return
        for v in verdicts:
            if v["guardrail"].startswith("score_shift_") and v["value"] is not None:
                cw.put_metric_data(**req.score_shift_metric_request(self.uc, v["value"], datetime.now(UTC)))
                log.info("published %s %.4f (%s scores on the smaller side)", v["guardrail"], v["value"], least)

    @staticmethod
    def _alarms_in_alarm(cw: Any, names: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        out = {}
        found = cw.describe_alarms(AlarmNames=list(names.values()))
        states = {a["AlarmName"]: a for a in [*found.get("MetricAlarms", []), *found.get("CompositeAlarms", [])]}
        for g, a in names.items():
            if states.get(a, {}).get("StateValue") == "ALARM":
                out[g] = (a, states[a].get("StateReason", ""))
        return out

    @staticmethod
    def _with_alarms(
        verdicts: Sequence[Mapping[str, Any]], names: Mapping[str, str], in_alarm: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The capture holds answered requests only: the error rate and the latency are the
        CloudWatch alarms' verdicts (the score shift: ours, which its alarm also watched)."""
        out = []
        for v in verdicts:
            g = v["guardrail"]
            if g in ("error_rate", "p99_latency_ms"):
                fired = g in in_alarm
                out.append(
                    {
                        **v,
                        "value": None,
                        "ok": not fired,
                        "detail": f"CloudWatch alarm {names[g]}: "
                        + (f"ALARM ({in_alarm[g][1]})" if fired else "did not fire during the update"),
                    }
                )
            elif g in in_alarm:
                out.append({**v, "ok": False, "detail": f"{v['detail']}; CloudWatch alarm {names[g]} fired"})
            else:
                out.append(dict(v))
        return out

    def captures_of(self, config: str, variant: str, since: datetime) -> list[dict[str, Any]]:
        """The data capture of the fleet serving ``config`` since ``since``, as the guardrails read
        captures: each answered request with its inference id and score."""
        s3 = self.rt.client("s3")
        base = f"{req.capture_prefix(self.uc, config)}/{self.name}/{self.opts.sagemaker.variant_name}/"
        bucket, prefix = split_s3_uri(base)
        out = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                if o["LastModified"] < since.replace(minute=0, second=0, microsecond=0):
                    continue
                body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode()
                for line in body.splitlines():
                    if line.strip():
                        out += self._capture_row(json.loads(line), variant, since)
        return out

    @staticmethod
    def _capture_row(event: Mapping[str, Any], variant: str, since: datetime) -> list[dict[str, Any]]:
        meta = event.get("eventMetadata", {})
        at = datetime.fromisoformat(str(meta.get("inferenceTime", "")).replace("Z", "+00:00"))
        if at < since:
            return []
        output = event["captureData"]["endpointOutput"]
        data = output["data"]
        if output.get("encoding") == "BASE64":
            import base64

            data = base64.b64decode(data).decode()
        scores = [float(x) for x in str(data).replace("\n", ",").split(",") if x.strip()]
        rid = meta.get("inferenceId")
        return [
            {"variant": variant, "status": 200, "latency_ms": None, "response": {"id": rid, "score": s}}
            for s in scores[:1]
        ]

    # ------------------------------------------------------------------ replayed traffic

    def replay_records(
        self, registry: Any, version: int, shape: Any = None
    ) -> tuple[list[dict[str, Any]], dict[Any, int]]:
        """The challenger's holdout (the rows it was judged on, labelled, in its feature order) as
        CSV request bodies, at most ``traffic.max_requests``; the label of each by its id."""
        import tempfile
        from pathlib import Path

        from mlblueprints.explain.steps import holdout

        uc = self.uc
        if not self.opts.traffic.replay:
            return [], {}
        assert uc.training is not None
        label = uc.training_sets[uc.training.training_set].labels.label
        with tempfile.TemporaryDirectory(prefix="mlb-replay-") as work:
            frame = holdout(uc, registry, version, Path(work))
        frame = frame.tail(self.opts.traffic.max_requests)
        feats = uc.model_features()
        records, labels = [], {}
        for i, row in enumerate(frame[[*feats, label]].itertuples(index=False, name=None)):
            rid = f"holdout-{i}"
            body = ",".join("" if x is None or x != x else repr(float(x)) for x in row[:-1])
            records.append({"id": rid, "body": body})
            if row[-1] is not None and row[-1] == row[-1]:
                labels[rid] = int(row[-1])
        return records, labels

    def send(
        self, records: Sequence[Mapping[str, Any]], seconds: float, max_requests: int, offset: int = 0
    ) -> dict[str, Any]:
        """InvokeEndpoint with the records (cycling from ``offset``) at ``traffic.rate_per_second``
        for ``seconds`` or ``max_requests`` requests; each with its ``InferenceId``."""
        from mlblueprints.serving.core import paced

        runtime = self.rt.client("sagemaker-runtime")
        generation = self.generation

        def client() -> Any:
            def call(i: int) -> int:
                r = records[(offset + i) % len(records)]
                seen: dict[str, Any] = {"generation": generation, "variant": None, "latency_ms": None, "response": None}
                t = time.perf_counter()
                try:
                    resp = runtime.invoke_endpoint(
                        EndpointName=self.name,
                        ContentType=req.CONTENT_TYPE,
                        Accept=req.CONTENT_TYPE,
                        Body=r["body"].encode(),
                        InferenceId=str(r["id"]),
                    )
                    body = resp["Body"].read().decode()
                    seen["status"] = int(resp["ResponseMetadata"]["HTTPStatusCode"])
                    seen["variant"] = resp.get("InvokedProductionVariant")
                    seen["response"] = {"id": r["id"], "score": float(body.strip().split(",")[0].split("\n")[0])}
                except Exception as exc:
                    meta = getattr(exc, "response", {}) or {}
                    seen["status"] = int(meta.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                    # a model error names the variant that failed in its headers
                    headers = meta.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                    seen["variant"] = headers.get("x-amzn-invoked-production-variant")
                seen["latency_ms"] = (time.perf_counter() - t) * 1000
                self.observed.append(seen)
                return int(seen["status"])

            return call, lambda: None

        return paced(client, self.opts.traffic, seconds, max_requests)

    # ------------------------------------------------------------------ after the decision

    def decided(self, version: int, promoted: bool, reason: str) -> None:
        """The version's model package Approved (promoted) or Rejected (rolled back)."""
        arn = self._package(version)
        self._sm().update_model_package(**req.approval_request(arn, promoted, reason))
        log.info("model package %s: %s", arn, "Approved" if promoted else "Rejected")

    def where(self) -> list[str]:
        d = self.describe()
        at = f"{d['EndpointStatus']}, config {d['EndpointConfigName']}" if d else "not created yet"
        return [
            f"endpoint: SageMaker endpoint {self.name} ({at}); data capture under "
            f"{req.capture_prefix(self.uc, '<config>')}; deployment history: {self.deployments().uri}"
        ]
