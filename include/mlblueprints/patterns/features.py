"""The feature pattern: Gold -> offline store + online store, per feature view.

Scheduled on the Gold Assets its views read, so it runs when a gated Gold commit lands::

    plan -> materialize__<view> (one per view, emits the view's Asset) -> report

``plan`` decides the event dates, in this order: the ``event_dates`` Param; the ranges carried by
the Gold Asset events that triggered the run (``{"range": [lo, hi]}``, merged); the range of the
Gold table's current snapshot, where the backend can tell it. Each materialize step writes both
stores of one view from the same batch; on aws its Gold batch is UNLOADed by Athena (``service``)
and written to SageMaker Feature Store from the worker.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import feature_view_asset, table_asset
from mlblueprints.core.service import ATHENA
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.features.steps"
RESULTS = "mlblueprints.core.results"


def declare(uc: UseCase) -> PatternSpec | None:
    if not uc.features:
        return None
    sources = sorted({v.source for v in uc.features.values()})
    gold = [table_asset(uc, s) for s in sources]
    views = {v: feature_view_asset(uc, v) for v in uc.features}
    steps = [Step("plan", f"{STEPS}:plan", result=f"{RESULTS}:FeaturePlan")]
    for view in uc.features:
        steps.append(
            Step(
                f"materialize__{view}",
                f"{STEPS}:materialize",
                {"view": view},
                inputs={"planned": "plan"},
                emits=(views[view].name,),
                capability="features",
                backend_key={"view": view},
                service=ATHENA,
                result=f"{RESULTS}:MaterializeStep",
            )
        )
    steps.append(
        report_step(STEPS, tuple(f"materialize__{v}" for v in uc.features)),
    )
    params = (
        ParamSpec(
            "event_dates",
            [],
            "array",
            "Event dates to materialize (their min..max range). Empty: what the triggering Gold Asset events "
            "say was recomputed.",
            {"type": "string", "format": "date"},
        ),
        ParamSpec(
            "views",
            [],
            "array",
            "Feature views to materialize. Empty: all.",
            {"type": "string", "enum": sorted(uc.features)},
        ),
    )
    schedule = Schedule(assets=gold[0].name if len(gold) == 1 else ("any", *(a.name for a in gold)))
    return PatternSpec(
        pattern="features",
        usecase=uc.name,
        description=f"{uc.name}: feature views -> offline + online stores ({uc.target})",
        doc=__doc__ or "",
        schedule=schedule,
        steps=tuple(steps),
        params=params,
        assets=(*gold, *views.values()),
        start_date=uc.start_date,
        tags=base_tags("features", uc),
    )
