"""The lakehouse pattern: landing -> Bronze -> Silver -> Gold, with a quality gate after each.

Per data set::

    tables -> ingest__<ds> -> gate_bronze__<ds> -> silver__<ds> -> gate_silver__<ds>
                                                      \\-> reconcile
    gate_silver of its inputs -> gold__<table> -> gate_gold__<table>
    reconcile, every gate -> compact -> report

A gate emits the Asset of the table it checked, only when it passes, so later patterns can be
scheduled on Gold; a Gold Asset event carries ``{"range": [lo, hi], "snapshot_id": ...}``, the
event dates that were recomputed. Each run covers the landing dates of its data interval (or the
``landing_dates`` Param). On aws every step but the report is Athena statements run by the
Amazon provider's operator (``service``); the gates validate the rows Athena UNLOADs in the worker.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import table_asset
from mlblueprints.core.service import ATHENA
from mlblueprints.lakehouse import naming
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.lakehouse.steps"
RESULTS = "mlblueprints.core.results"
CAPABILITY = "lakehouse"


def declare(uc: UseCase) -> PatternSpec:
    assets = {}
    # the tables every step writes, created once per run before anything writes
    steps: list[Step] = [Step("tables", f"{STEPS}:tables", capability=CAPABILITY, result=f"{RESULTS}:TablesResult")]
    for ds in uc.datasets:
        bronze, silver = naming.table_name(ds, naming.BRONZE), naming.table_name(ds, naming.SILVER)
        assets[bronze], assets[silver] = table_asset(uc, bronze), table_asset(uc, silver)
        steps += [
            Step(
                f"ingest__{ds}",
                f"{STEPS}:ingest",
                {"dataset": ds},
                after=("tables",),
                capability=CAPABILITY,
                service=ATHENA,
                result=f"{RESULTS}:IngestStep",
            ),
            Step(
                f"gate_bronze__{ds}",
                f"{STEPS}:gate_bronze",
                {"dataset": ds},
                after=(f"ingest__{ds}",),
                emits=(assets[bronze].name,),
                capability=CAPABILITY,
                service=ATHENA,
                result=f"{RESULTS}:GateStep",
            ),
            Step(
                f"silver__{ds}",
                f"{STEPS}:silver",
                {"dataset": ds},
                after=(f"gate_bronze__{ds}",),
                capability=CAPABILITY,
                service=ATHENA,
                result=f"{RESULTS}:SilverStep",
            ),
            Step(
                f"gate_silver__{ds}",
                f"{STEPS}:gate_silver",
                {"dataset": ds},
                inputs={"summary": f"silver__{ds}"},
                emits=(assets[silver].name,),
                capability=CAPABILITY,
                service=ATHENA,
                result=f"{RESULTS}:GateStep",
            ),
        ]
    for g, spec in uc.gold.items():
        assets[g] = table_asset(uc, g)
        steps += [
            Step(
                f"gold__{g}",
                f"{STEPS}:gold",
                {"table": g},
                inputs={"silvers": tuple(f"silver__{ds}" for ds in spec.inputs)},
                after=tuple(f"gate_silver__{ds}" for ds in spec.inputs),
                capability=CAPABILITY,
                service=ATHENA,
                result=f"{RESULTS}:GoldResult",
            ),
            Step(
                f"gate_gold__{g}",
                f"{STEPS}:gate_gold",
                {"table": g},
                inputs={"summary": f"gold__{g}"},
                emits=(assets[g].name,),
                capability=CAPABILITY,
                service=ATHENA,
                result=f"{RESULTS}:GateStep",
            ),
        ]
    steps.append(
        Step(
            "reconcile",
            f"{STEPS}:reconcile",
            inputs={
                "silvers": tuple(f"silver__{ds}" for ds in uc.datasets),
                "ingests": tuple(f"ingest__{ds}" for ds in uc.datasets),
            },
            capability=CAPABILITY,
            service=ATHENA,
            result=f"{RESULTS}:ReconcileResult",
        )
    )
    gates = [s.id for s in steps if s.id.startswith(("gate_silver__", "gate_gold__"))]
    steps.append(
        Step(
            "compact",
            f"{STEPS}:compact",
            inputs={  # compaction rewrites the partitions the run wrote
                "ingests": tuple(f"ingest__{ds}" for ds in uc.datasets),
                "silvers": tuple(f"silver__{ds}" for ds in uc.datasets),
                "golds": tuple(f"gold__{g}" for g in uc.gold),
            },
            after=("reconcile", *gates),
            capability=CAPABILITY,
            service=ATHENA,
            result=f"{RESULTS}:CompactStep",
        )
    )
    steps.append(
        report_step(STEPS, ("compact",)),
    )
    params = (
        ParamSpec(
            "landing_dates",
            [],
            "array",
            "Landing dates to process (YYYY-MM-DD). Empty: the days of the data interval.",
            {"type": "string", "format": "date"},
        ),
        ParamSpec(
            "datasets",
            [],
            "array",
            "Data sets to process. Empty: all.",
            {"type": "string", "enum": sorted(uc.datasets)},
        ),
        ParamSpec("compact", True, "boolean", "Run compaction of small files after the gates."),
        ParamSpec("fail_on_gate_warning", False, "boolean", "Treat a failed warning-level expectation as an error."),
    )
    return PatternSpec(
        pattern="lakehouse",
        usecase=uc.name,
        description=f"{uc.name}: landing -> Bronze -> Silver -> Gold with Great Expectations gates ({uc.target})",
        doc=__doc__ or "",
        schedule=Schedule(cron=uc.schedule),
        steps=tuple(steps),
        params=params,
        assets=tuple(assets.values()),
        start_date=uc.start_date,
        end_date=uc.end_date,
        catchup=uc.catchup,
        tags=base_tags("lakehouse", uc),
    )
