"""The aws lakehouse under moto, and the checks that decide whether its SQL is right.

Shared by the aws lakehouse tests (the DAG, the limits) and the mutation check: a test builds an
:class:`AwsLake` inside the moto world, runs the backend's steps on it (each step's Athena
statements run by :mod:`mlblueprints.aws.direct` on the Athena twin, which executes them on
DuckDB), and compares what the aws target wrote with what the local target writes from the same
landed files (:class:`Oracle`). A wrong MERGE key, a dropped filter or a dropped dedupe makes
the tables differ, or the twin refuse the statement, and the check fails.

Known differences of the aws target (docs/lakehouse.md) are left out of the comparison: lineage
columns (checksums are S3's, ``_line_number`` is an ordinal), ``_extra``, and quarantine reason
codes of malformed CSV lines (the worlds here generate none).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import yaml
from moto_world import REGION, AthenaTwin, S3OwnerGuard, run_direct

from helpers import ROOT, read_table, runtime_home
from mlblueprints.config import UseCase, load_usecase
from mlblueprints.lakehouse import local, naming
from mlblueprints.lineage import RunInfo

GOLD = "transaction_features"
KINDS = ("bronze", "silver", "quarantine", "duplicates")


def usecase_data(name: str, bucket: str, db: str, kms: str, target: str = "aws") -> dict[str, Any]:
    """The shipped fraud use case, for ``target``, with its aws section pointed at a test world."""
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data.update(name=name, target=target, retry_delay_seconds=0)
    data["aws"].update(region=REGION, bucket=bucket, prefix="fraud", glue_database=db, kms_key_arn=kms)
    data["gold"][GOLD]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    return data


def write_usecase(directory: Path, data: dict[str, Any]) -> UseCase:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_usecase(path)


# ---------------------------------------------------------------- the local target: the oracle


@dataclass
class Oracle:
    """The tables the local target built from the same landed files."""

    home: Path
    uc: UseCase
    days: list[date]

    def table(self, name: str) -> pd.DataFrame:
        with runtime_home(self.home):
            return read_table(self.uc, name)


def build_oracle(landing: Path, base: Path, days: list[date]) -> Oracle:
    """Run the local target over ``landing`` one landing date at a time (as the DAG does)."""
    home = base / "oracle"
    shutil.copytree(landing, home / "landing")
    uc = write_usecase(
        base / "oracle_uc",
        usecase_data(
            "fraud_oracle", "unused-bucket", "unused", "arn:aws:kms:eu-west-1:123456789012:key/unused", target="local"
        ),
    )
    with runtime_home(home):
        for d in days:
            run = RunInfo.for_usecase(uc, run_id=f"oracle-{d}")
            touched = {}
            for ds in uc.datasets:
                local.ingest_bronze(uc, ds, [d], run)
                touched[ds] = local.build_silver(uc, ds, [d], run)["touched_event_dates"]
            local.build_gold(uc, GOLD, touched, run)
    return Oracle(home=home, uc=uc, days=days)


# ---------------------------------------------------------------- the aws target in the moto world


@dataclass
class AwsLake:
    """An aws use case in the moto world: bucket, KMS key, workgroup, the Athena twin (with the
    MERGE key contract of the use case), the S3 ownership guard, and the landed files in S3."""

    uc: UseCase
    twin: AthenaTwin
    guard: S3OwnerGuard
    rt: Any
    bucket: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def make(
        cls,
        mw: Any,
        monkeypatch: Any,
        landing: Path | None,
        *,
        name: str = "fraud_aws",
        bucket: str = "mlb-test-lake",
        db: str = "fraud_lake",
        aws: dict[str, Any] | None = None,
    ) -> AwsLake:
        from mlblueprints.aws.session import boto3_runtime

        mw.bucket(bucket)
        kms = mw.kms_key("lake")
        mw.workgroup(bucket)
        data = usecase_data(name, bucket, db, kms)
        data["aws"].update(aws or {})
        uc = write_usecase(mw.tmp / "usecases", data)
        if landing is not None:
            upload_landing(landing, bucket)
        twin = AthenaTwin(db, mw.tmp, kms).install(monkeypatch).expect_merge_keys(uc)
        guard = S3OwnerGuard().install(monkeypatch)
        return cls(uc=uc, twin=twin, guard=guard, rt=boto3_runtime(uc), bucket=bucket)

    def backend(self) -> Any:
        from mlblueprints.lakehouse.aws import AwsLakehouse

        return AwsLakehouse(self.uc, self.rt)

    def run_info(self, step: str, day: date | str = "", try_number: int = 1) -> RunInfo:
        return RunInfo.for_usecase(
            self.uc, run_id=f"manual__{day}", task_id=f"{step}.athena", try_number=try_number, dag_id="test"
        )

    def step(self, step: str, method: str, *args: Any, day: date | str = "", try_number: int = 1) -> Any:
        run = self.run_info(step, day, try_number)
        out = run_direct(self.uc, self.rt, getattr(self.backend(), method)(*args, run), run)
        self.runs.append({"step": step, "day": str(day), "result": out})
        return out

    def compact(self, touched: dict[str, list[str]] | None, day: str = "compact") -> Any:
        run = self.run_info("compact", day)
        out = run_direct(self.uc, self.rt, self.backend().compact(run, touched), run)
        self.runs.append({"step": "compact", "day": day, "result": out})
        return out

    def day(self, d: date, gold: bool = True) -> dict[str, Any]:
        """One landing date through tables, Bronze, Silver and Gold, as the DAG runs it."""
        out: dict[str, Any] = {"tables": self.step("tables", "ensure_tables", day=d)}
        touched = {}
        for ds in self.uc.datasets:
            out[f"ingest__{ds}"] = self.step(f"ingest__{ds}", "ingest_bronze", ds, [d], day=d)
            out[f"silver__{ds}"] = self.step(f"silver__{ds}", "build_silver", ds, [d], day=d)
            touched[ds] = out[f"silver__{ds}"]["touched_event_dates"]
        if gold:
            out[f"gold__{GOLD}"] = self.step(f"gold__{GOLD}", "build_gold", GOLD, touched, day=d)
        return out

    def table(self, name: str) -> pd.DataFrame:
        return self.twin.con.execute(f'SELECT * FROM "{self.twin.database}"."{name}"').df()


def install_suites(mw: Any, monkeypatch: Any, name: str) -> Path:
    """The shipped quality suites, named for the use case ``name`` (MLB_EXPECTATIONS_DIR)."""
    expectations = mw.tmp / "expectations"
    shutil.copytree(ROOT / "expectations/fraud_detection", expectations / name)
    for f in (expectations / name).glob("*.json"):
        suite = json.loads(f.read_text())
        suite["name"] = f"{name}/{f.stem}"
        f.write_text(json.dumps(suite))
    monkeypatch.setenv("MLB_EXPECTATIONS_DIR", str(expectations))
    return expectations


def upload_landing(landing: Path, bucket: str, prefix: str = "fraud/landing") -> int:
    s3 = boto3.client("s3", region_name=REGION)
    n = 0
    for p in sorted(landing.rglob("*")):
        if p.is_file() and "_generator" not in p.parts:
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(landing).as_posix()}", Body=p.read_bytes())
            n += 1
    return n


# ---------------------------------------------------------------- the checks


def _norm(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and pd.isna(v)):
        return None
    if isinstance(v, Decimal):
        return round(float(v), 6)
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime().replace(tzinfo=None)
    if isinstance(v, date) and not isinstance(v, datetime):  # DuckDB's DATE reads back as a timestamp
        return datetime.combine(v, datetime.min.time())
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return _norm(v.item())
    return v


def rows_of(df: pd.DataFrame, columns: list[str]) -> list[tuple[Any, ...]]:
    if df.empty:
        return []
    return sorted((tuple(_norm(v) for v in r) for r in df[columns].itertuples(index=False, name=None)), key=repr)


def assert_same(aws: pd.DataFrame, local_df: pd.DataFrame, columns: list[str], label: str) -> None:
    a, b = rows_of(aws, columns), rows_of(local_df, columns)
    if a == b:
        return
    only_a = list((Counter(a) - Counter(b)).elements())[:3]
    only_b = list((Counter(b) - Counter(a)).elements())[:3]
    raise AssertionError(
        f"{label}: {len(a)} rows on aws, {len(b)} locally; only on aws {only_a}; only locally {only_b}"
    )


def check_same_as_local(lake: AwsLake, oracle: Oracle) -> None:
    """What the aws statements wrote is what the local target wrote from the same files."""
    uc = lake.uc
    for ds_name, ds in uc.datasets.items():
        business = [c.name for c in ds.columns]
        silver = naming.table_name(ds_name, naming.SILVER)
        assert_same(lake.table(silver), oracle.table(silver), [*business, "event_date", "_landing_date"], silver)
        dups = naming.table_name(ds_name, naming.DUPLICATES)
        assert_same(lake.table(dups), oracle.table(dups), [*business, "event_date", "_duplicate_kind"], dups)
        quarantine = naming.table_name(ds_name, naming.QUARANTINE)
        assert_same(
            lake.table(quarantine),
            oracle.table(quarantine),
            [*business, "_landing_date", "_reason_code", "_reason_column"],
            quarantine,
        )
        bronze = naming.table_name(ds_name, naming.BRONZE)
        assert_same(lake.table(bronze), oracle.table(bronze), [*business, "_landing_date", "_source_file"], bronze)
    gold_cols = [c for c in oracle.table(GOLD).columns]
    assert_same(lake.table(GOLD), oracle.table(GOLD), gold_cols, GOLD)


def check_steps_kept_to_their_scope(lake: AwsLake, oracle: Oracle) -> None:
    """Each Silver step read the Bronze rows of its own landing date only, and every write
    stayed within Athena's limits."""
    bronze = oracle.table(naming.table_name("transactions", naming.BRONZE))
    for r in lake.runs:
        if r["step"] == "silver__transactions":
            landing = date.fromisoformat(r["day"])
            want = int((bronze["_landing_date"] == landing).sum())
            got = r["result"]["rows_landed"]
            assert got == want, f"Silver of landing date {landing} read {got} Bronze rows; that date has {want}"
    check_within_limits(lake)


def check_within_limits(lake: AwsLake) -> None:
    budget = lake.uc.aws.athena_max_statement_bytes
    for e in lake.twin.executions:
        assert len(e["query"].encode()) <= budget, (len(e["query"].encode()), e["query"][:120])
        # the only failures: Athena asking for another OPTIMIZE / VACUUM run (which the runner makes)
        assert not e.get("failed") or "_MORE_RUNS_NEEDED" in e["failed"], e["failed"]
    assert all(w["partitions"] <= 100 for w in lake.twin.writes), max(w["partitions"] for w in lake.twin.writes)
    assert lake.guard.without_owner() == [], lake.guard.without_owner()[:5]
    assert any(r["by"] == "project" for r in lake.guard.requests), "the project made no S3 request at all"


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str)[:2000]


def days_of(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]
