"""DAG factory of the feature pattern: Gold -> offline store + online store, per feature view.

``build_features_dag(usecase)`` returns ``<usecase>__features`` (None for a use case with no
feature views). It is scheduled on the Gold Assets its views read, so it runs when a gated Gold
commit lands::

    plan -> materialize__<view> (one per view, emits the view's Asset) -> report

``plan`` decides the event dates, in this order: the ``event_dates`` Param; the ranges carried by
the Gold Asset events that triggered the run (``{"range": [lo, hi]}``, merged); on the local
target, the range of the Gold table's current snapshot. Each materialize task writes both stores
of one view from the same batch (``mlblueprints.features.local`` or ``.aws``).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetAny, Param, TriggerRule, get_current_context, task

from mlblueprints.airflow.lakehouse import lakehouse_assets
from mlblueprints.config import UseCase

log = logging.getLogger(__name__)

TAGS = ("mlblueprints", "features")


def view_asset(uc: UseCase, view: str) -> Asset:
    """The Asset a feature view emits after each materialization (training is scheduled on it)."""
    from mlblueprints.features.core import asset_uri

    return Asset(
        name=f"{uc.name}.features.{view}",
        uri=asset_uri(uc, view),
        group="features",
        extra={"usecase": uc.name, "view": view, "version": uc.features[view].version},
    )


def feature_assets(uc: UseCase) -> dict[str, Asset]:
    return {v: view_asset(uc, v) for v in uc.features}


def _run_info(uc: UseCase) -> Any:
    from mlblueprints.lineage import RunInfo

    ctx = get_current_context()
    ti = ctx["ti"]
    return RunInfo.for_usecase(
        uc, run_id=ctx["run_id"], dag_id=ti.dag_id, task_id=ti.task_id, try_number=int(ti.try_number or 1)
    )


def _plan(uc: UseCase) -> dict[str, Any]:
    from mlblueprints.features import core

    ctx = get_current_context()
    params = ctx["params"]
    chosen = params.get("event_dates") or []
    if isinstance(chosen, str):
        chosen = [s for s in chosen.replace(",", " ").split() if s]
    if chosen:
        rng, source = core.date_range(chosen), "param event_dates"
    else:
        extras = []
        events = ctx.get("triggering_asset_events") or {}
        for asset in events:
            extras += [e.extra for e in events[asset]]
        rng, source = core.range_from_asset_extras(extras), "triggering Gold Asset events"
        if rng is None and uc.target == "local":
            from mlblueprints.features.local import latest_gold_range

            rng = latest_gold_range(uc, sorted({v.source for v in uc.features.values()}))
            source = "the current Gold snapshot"
    if rng is None:
        raise ValueError(
            "no event dates to materialize: set the event_dates Param (YYYY-MM-DD), "
            "or let the Gold Asset trigger the run"
        )
    views = params.get("views") or sorted(uc.features)
    log.info("materializing %s for event dates %s..%s (from %s)", views, rng[0], rng[1], source)
    return {"range": [rng[0].isoformat(), rng[1].isoformat()], "views": views, "source": source}


def build_features_dag(uc: UseCase) -> DAG | None:
    """Build ``<usecase>__features`` for one use case (None when it declares no feature views)."""
    if not uc.features:
        return None
    gold_assets = lakehouse_assets(uc)
    sources = sorted({v.source for v in uc.features.values()})
    schedule: Any = gold_assets[sources[0]] if len(sources) == 1 else AssetAny(*(gold_assets[s] for s in sources))
    assets = feature_assets(uc)
    start = datetime.combine(uc.start_date, datetime.min.time(), tzinfo=UTC)
    params = {
        "event_dates": Param(
            [],
            type="array",
            items={"type": "string", "format": "date"},
            description="Event dates to materialize (their min..max range). Empty: what the triggering "
            "Gold Asset events say was recomputed.",
        ),
        "views": Param(
            [],
            type="array",
            items={"type": "string", "enum": sorted(uc.features)},
            description="Feature views to materialize. Empty: all.",
        ),
    }
    dag = DAG(
        dag_id=f"{uc.name}__features",
        description=f"{uc.name}: feature views -> offline + online stores ({uc.target})",
        schedule=schedule,
        start_date=start,
        catchup=False,
        max_active_runs=1,
        tags=sorted({*TAGS, uc.name, uc.target, *uc.tags}),
        params=params,
        default_args={
            "owner": uc.owner,
            "retries": uc.retries,
            "retry_delay": timedelta(seconds=uc.retry_delay_seconds),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30),
        },
        doc_md=__doc__,
    )
    with dag:

        @task(task_id="plan")
        def plan() -> dict[str, Any]:
            return _plan(uc)

        p = plan()
        mats = [_materialize_task(uc, view, assets[view])(p) for view in uc.features]

        @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, retries=0)
        def report() -> dict[str, Any]:
            from mlblueprints.features.report import write_features_report

            ctx = get_current_context()
            ti = ctx["ti"]
            results = {t: ti.xcom_pull(task_ids=t) for t in dag.task_ids if t != "report"}
            errors = {}
            for view in uc.features:  # say why a view failed when it is its definition
                if results.get(f"materialize__{view}") is None and uc.view_target(view) == "local":
                    from mlblueprints.features.local import check_view

                    errors[f"materialize__{view}"] = check_view(uc, view)
            path, text, missing = write_features_report(
                uc, ctx["run_id"], results, {t: e for t, e in errors.items() if e}
            )
            log.info("\n%s", text)
            if missing:
                raise RuntimeError(f"run incomplete: task(s) {missing} did not succeed; report: {path}")
            return {"report": str(path)}

        r = report()
        for m in mats:
            m >> r
    return dag


def _materialize_task(uc: UseCase, view: str, asset: Asset) -> Any:
    @task(task_id=f"materialize__{view}", outlets=[asset])
    def materialize(planned: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from mlblueprints.features.core import FeatureViewError

        if view not in planned["views"]:
            return {"view": view, "skipped": True}
        lo, hi = (date.fromisoformat(x) for x in planned["range"])
        try:
            if uc.view_target(view) == "aws":
                from mlblueprints.airflow.aws_features import AwsFeatures

                out = AwsFeatures(uc).materialize(uc, view, lo, hi, _run_info(uc))
            else:
                from mlblueprints.features import local

                out = local.materialize(uc, view, lo, hi, _run_info(uc))
        except FeatureViewError as exc:  # the same Gold fails the same way: no retries
            raise AirflowFailException(str(exc)) from exc
        log.info(
            "%s %s..%s: %s rows in, %s offline rows, %s entities online, skipped %s null key / %s null time, "
            "%s same-instant duplicates collapsed",
            view,
            lo,
            hi,
            out["rows_in"],
            out["offline_rows"],
            out["online_entities"],
            out["skipped_null_key"],
            out["skipped_null_event_time"],
            out["collapsed_duplicates"],
        )
        get_current_context()["outlet_events"][asset].extra = {
            "range": out["range"],
            "version": uc.features[view].version,
            "offline_snapshot_id": out.get("offline_snapshot_id"),
        }
        return out

    return materialize
