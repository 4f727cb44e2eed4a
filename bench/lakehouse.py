"""Benchmark of the local lakehouse pattern: landing -> Bronze -> Silver -> Gold, with the gates.

Usage::

    .venv/bin/python bench/lakehouse.py [--rows 1000000 10000000] [--days 30] [--json PATH]

For each size, synthetic fraud data is generated once (``generate_fraud``, clean by default) under a
fresh ``MLB_HOME`` and the ``transactions`` data set goes through the layers with ALL landing
dates as one interval (each layer handles every row in one call: the stress case). Every measured
step runs in a fresh subprocess of this script (``bench/lakehouse.py _step <name> ...``), so the
peak RSS of a step is that process's own high-water mark (``ru_maxrss`` from ``os.wait4``).

In the same run, a floor is measured: DuckDB reads the same landing files (CSV and JSON Lines,
every column as text) and writes them as Parquet, nothing else; Bronze->Gold is reported as a
multiple of it. A compaction section ingests the same rows in many small waves (many small files
per Bronze partition), then times a scan before and after ``compact()``.

Results print as fixed-width tables on stdout (progress goes to stderr); ``--json PATH`` writes
them as JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from harness import (
    Profile,
    StepRunner,
    TimedConnection,
    duckdb_settings,
    log,
    machine_facts,
    mb,
    recorded,
    run_child_step,
)

SCRIPT = Path(__file__).resolve()
PROJECT = SCRIPT.parent.parent
START = date(2024, 3, 1)
DATASET = "transactions"
GOLD = "transaction_features"
BRONZE_TABLE = f"{DATASET}_bronze"
LAYERS = (("bronze", "landing->Bronze"), ("silver", "Bronze->Silver"), ("gold", "Silver->Gold"))
SCAN_SQL = (
    "SELECT _landing_date, COUNT(*) AS n, SUM(TRY_CAST(amount AS DECIMAL(12,2))) AS amount "
    "FROM bronze_scan GROUP BY _landing_date ORDER BY _landing_date"
)


# ====================================================================== child side (one step)


def _label(sql: Any) -> str:
    """A statement's label in the profile: literals masked, COPY targets named by their table."""
    s = " ".join(re.sub(r"--[^\n]*", "", str(sql)).split())
    m = re.match(r"COPY \(.*\) TO '([^']*)'", s)
    if m:
        t = re.search(r"/([^/]+)/data/write-", m.group(1))
        return f"COPY (...) TO <{t.group(1) if t else 'file'}> parquet"
    tag = ""
    if s.startswith("INSERT INTO _stage"):
        tag = " [jsonl file]" if "json_extract_string" in s else " [csv file]"
    s = re.sub(r"'[^']*'", "'?'", s)
    return s[: 90 - len(tag)] + tag


def _instrument(prof: Profile) -> None:
    from pyiceberg.table import Transaction

    from mlblueprints.lakehouse import iceberg, local

    raw_connect = local.connect
    local.connect = lambda: TimedConnection(raw_connect(), prof, _label)
    for name in ("_scan", "_read_csv_file", "_read_jsonl_file", "_manifest_rows"):
        prof.wrap(local, name, f"local.{name}")
    for name in ("write", "register_view", "ensure_table", "partition_files", "remove_orphan_files"):
        prof.wrap(iceberg, name, f"iceberg.{name}")
    for name in ("delete", "add_files", "commit_transaction"):
        prof.wrap(Transaction, name, f"pyiceberg Transaction.{name}")
    if "great_expectations" in sys.modules:
        import duckdb_engine
        import great_expectations as gx
        from great_expectations.checkpoint.actions import UpdateDataDocsAction
        from great_expectations.checkpoint.checkpoint import Checkpoint
        from great_expectations.core.validation_definition import ValidationDefinition

        from mlblueprints.quality import gx as mlb_gx

        prof.wrap(mlb_gx, "run_gate", "gx.run_gate (whole)")
        prof.wrap(mlb_gx, "check_suite_for_table", "gx: suite loaded and checked")
        prof.wrap(gx, "get_context", "GX get_context")
        prof.wrap(Checkpoint, "run", "GX Checkpoint.run")
        prof.wrap(ValidationDefinition, "run", "GX ValidationDefinition.run (the expectations)")
        prof.wrap(UpdateDataDocsAction, "run", "GX UpdateDataDocsAction.run (Data Docs HTML)")
        raw_execute = duckdb_engine.CursorWrapper.execute

        def execute(self: Any, statement: str, *a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return raw_execute(self, statement, *a, **k)
            finally:
                prof.add(prof.sql, "GX: " + _label(statement), time.perf_counter() - t)

        duckdb_engine.CursorWrapper.execute = execute


def _usecase() -> Any:
    from mlblueprints import runtime
    from mlblueprints.config import load_usecase

    return load_usecase(runtime.usecases_dir() / "fraud_detection.yaml")


def _run_info(uc: Any, run_id: str) -> Any:
    from mlblueprints.lineage import RunInfo

    return RunInfo.for_usecase(uc, run_id=run_id)


def _landing_files(home: Path) -> list[Path]:
    root = home / "landing" / DATASET
    return sorted(p for p in root.glob("*/*") if p.is_file() and not p.name.startswith(("_", ".")))


def _landing_dates(home: Path) -> list[date]:
    return sorted(date.fromisoformat(p.name) for p in (home / "landing" / DATASET).iterdir() if p.is_dir())


def _step_generate(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.datagen.fraud import DefectConfig, generate_fraud

    defects = DefectConfig.none() if p["defects"] == "none" else DefectConfig()
    m = generate_fraud(home / "landing", start=START, days=p["days"], rows=p["rows"], seed=p["seed"], defects=defects)
    files = [f for f in m.files if f.dataset == DATASET]
    by_fmt = {fmt: [f for f in files if f.format == fmt] for fmt in ("csv", "jsonl")}
    return {
        "files": {fmt: len(v) for fmt, v in by_fmt.items()},
        "bytes": {fmt: sum(f.bytes for f in v) for fmt, v in by_fmt.items()},
        "records": {fmt: sum(f.records for f in v) for fmt, v in by_fmt.items()},
        "landed_records": m.expected.landed_records[DATASET],
        "silver_rows_expected": m.expected.silver_rows[DATASET],
        "late_records": m.expected.late_records,
    }


def _step_floor(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.datagen.fraud import TRANSACTION_COLUMNS
    from mlblueprints.lakehouse import local

    files = _landing_files(home)
    csvs = [str(f) for f in files if f.suffix == ".csv"]
    jsons = [str(f) for f in files if f.suffix == ".jsonl"]
    out = home / "floor_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = local.connect()
    lst = ", ".join
    q = "'"
    res: dict[str, Any] = {}
    t = time.perf_counter()
    if csvs:
        sql = (
            f"COPY (SELECT * FROM read_csv([{lst(q + f + q for f in csvs)}], header = true, all_varchar = true, "
            f"union_by_name = true)) TO '{out / 'csv.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
        )
        res["csv_rows"] = con.execute(sql).fetchone()[0]
    res["csv_seconds"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    if jsons:
        cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in TRANSACTION_COLUMNS) + "}"
        sql = (
            f"COPY (SELECT * FROM read_json([{lst(q + f + q for f in jsons)}], format = 'newline_delimited', "
            f"columns = {cols})) TO '{out / 'jsonl.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
        )
        res["jsonl_rows"] = con.execute(sql).fetchone()[0]
    res["jsonl_seconds"] = round(time.perf_counter() - t, 3)
    res["rows"] = res.get("csv_rows", 0) + res.get("jsonl_rows", 0)
    res["bytes_written"] = sum(f.stat().st_size for f in out.iterdir())
    shutil.rmtree(out, ignore_errors=True)
    return res


def _step_bronze(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.lakehouse import local

    uc = _usecase()
    s = local.ingest_bronze(uc, DATASET, _landing_dates(home), _run_info(uc, p.get("run_id", "bench")))
    return {
        "rows": s["rows_landed"],
        "file_status": s["file_status"],
        "warnings": len(s["warnings"]),
        "rejected_files": len(s["rejected_files"]),
    }


def _step_silver(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.lakehouse import local

    uc = _usecase()
    s = local.build_silver(uc, DATASET, _landing_dates(home), _run_info(uc, "bench"))
    keep = ("rows_landed", "valid", "quarantined", "duplicates", "rows_into_silver", "touched_event_dates", "writes")
    return {"rows": s["rows_landed"], **{k: s[k] for k in keep}}


def _step_gold(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.lakehouse import local

    uc = _usecase()
    s = local.build_gold(uc, GOLD, {DATASET: p["touched"]}, _run_info(uc, "bench"))
    return {"rows": s["rows_written"], "recomputed": s["recomputed"], "write": s["write"]}


def _step_gate(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.lakehouse import local

    uc = _usecase()
    rep = local.gate(uc, p["table"], p["layer"], p["scope"], _run_info(uc, "bench"))
    return {
        "rows": rep.rows,
        "success": rep.success,
        "evaluated": rep.evaluated,
        "run_gate_seconds": rep.seconds,
        "failed_critical": [f["type"] for f in rep.failed_critical],
        "failed_warning": [f["type"] for f in rep.failed_warning],
    }


def _step_split_waves(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    """Cut every transactions landing file of ``p['source']`` into ``waves`` contiguous pieces."""
    src = Path(p["source"])
    waves = p["waves"]
    written = 0
    for f in _landing_files(src):
        lines = f.read_bytes().splitlines(keepends=True)
        header, body = (lines[:1], lines[1:]) if f.suffix == ".csv" else ([], lines)
        n = len(body)
        for k in range(waves):
            lo, hi = n * k // waves, n * (k + 1) // waves
            if hi <= lo:
                continue
            dst = home / "waves" / str(k) / f.parent.name / f"{f.stem}-w{k:02d}{f.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            with dst.open("wb") as out:
                out.writelines(header)
                out.writelines(body[lo:hi])
            written += 1
    return {"files_written": written}


def _table_files(uc: Any, table_name: str) -> dict[str, Any]:
    from mlblueprints.lakehouse import iceberg, naming

    table = iceberg.load(iceberg.catalog(), naming.identifier(uc, table_name))
    groups = iceberg.partition_files(table)
    sizes = [f[1] for v in groups.values() for f in v]
    snap = table.current_snapshot()
    return {
        "snapshots": len(table.snapshots()),
        "manifests": len(snap.manifests(table.io)) if snap else 0,
        "files": len(sizes),
        "partitions": len(groups),
        "bytes": sum(sizes),
        "max_files_per_partition": max((len(v) for v in groups.values()), default=0),
        "rows": sum(f[2] for v in groups.values() for f in v),
    }


def _step_scan(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    """Plan (catalog load + pyiceberg scan planning) and run the scan query, ``repeats`` times."""
    from mlblueprints.lakehouse import iceberg, local, naming

    uc = _usecase()
    plans, queries, result = [], [], None
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        con = local.connect()
        table = iceberg.load(iceberg.catalog(), naming.identifier(uc, p["table"]))
        n_files = iceberg.register_view(con, "bronze_scan", table)
        t1 = time.perf_counter()
        result = con.execute(SCAN_SQL).fetchall()
        t2 = time.perf_counter()
        con.close()
        plans.append(t1 - t0)
        queries.append(t2 - t1)
    totals = [a + b for a, b in zip(plans, queries, strict=True)]
    return {
        "files_scanned": n_files,
        "plan_seconds": [round(x, 4) for x in plans],
        "query_seconds": [round(x, 4) for x in queries],
        "plan_median": round(statistics.median(plans), 4),
        "query_median": round(statistics.median(queries), 4),
        "total_median": round(statistics.median(totals), 4),
        "rows": sum(r[1] for r in result or []),
        "amount": str(sum(r[2] for r in result or [] if r[2] is not None)),
        **{f"table_{k}": v for k, v in _table_files(uc, p["table"]).items()},
    }


def _step_compact(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.lakehouse import local

    uc = _usecase()
    if p.get("min_files") or p.get("small_file_fraction"):
        comp = uc.lakehouse.compaction.model_copy(
            update={k: p[k] for k in ("min_files", "small_file_fraction") if p.get(k)}
        )
        uc = uc.model_copy(update={"lakehouse": uc.lakehouse.model_copy(update={"compaction": comp})})
    return local.compact(uc, _run_info(uc, "bench-compact"), tables=p["tables"])


def _step_table_files(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    return _table_files(_usecase(), p["table"])


STEPS = {
    "generate": _step_generate,
    "floor": _step_floor,
    "bronze": _step_bronze,
    "silver": _step_silver,
    "gold": _step_gold,
    "gate": _step_gate,
    "split_waves": _step_split_waves,
    "scan": _step_scan,
    "compact": _step_compact,
    "table_files": _step_table_files,
}


def child_main(name: str, params_path: str, result_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    home = Path(os.environ["MLB_HOME"])
    t = time.perf_counter()
    import duckdb  # noqa: F401  (imports are paid before the clock of the step starts)

    from mlblueprints.lakehouse import local  # noqa: F401

    if name == "gate":
        import great_expectations  # noqa: F401

        from mlblueprints.quality import gx  # noqa: F401
    import_seconds = time.perf_counter() - t
    prof = Profile()
    _instrument(prof)
    run_child_step(name, result_path, lambda: STEPS[name](home, params), import_seconds, prof)


# ====================================================================== parent side


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def run_size(r: StepRunner, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    home = r.work / f"rows_{rows}"
    home.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"rows": rows, "home": str(home)}
    log(f"{rows:,} rows: generating {args.days} days ({args.defects} defects)")
    res["generate"] = gen = r.step(
        "generate", home=home, params={"rows": rows, "days": args.days, "seed": 42, "defects": args.defects}
    )
    log(f"  generated in {gen['seconds']:.1f} s: {gen['out']['files']} files, {gen['out']['bytes']} bytes")

    res["floor_runs"] = []
    for i in range(args.floor_repeats):
        f = r.step("floor", home=home)
        res["floor_runs"].append(f)
        log(f"  floor {i + 1}/{args.floor_repeats}: {f['seconds']:.2f} s, peak RSS {mb(f['peak_rss_kb'])}")
    med = statistics.median(f["seconds"] for f in res["floor_runs"])
    res["floor"] = {
        "seconds": round(med, 3),
        "runs": [f["seconds"] for f in res["floor_runs"]],
        "rows": res["floor_runs"][0]["out"]["rows"],
        "peak_rss_kb": max(f["peak_rss_kb"] for f in res["floor_runs"]),
        "cpu_seconds": statistics.median(f["cpu_seconds"] for f in res["floor_runs"]),
    }

    dates = [d.isoformat() for d in _landing_dates(home)]
    layers: dict[str, Any] = {}
    log(f"  landing->Bronze over {len(dates)} landing dates in one call")
    layers["bronze"] = {"step": r.step("bronze", home=home)}
    layers["bronze"]["gate"] = r.step(
        "gate", home=home, params={"table": DATASET, "layer": "bronze", "scope": {"landing_dates": dates}}
    )
    log("  Bronze->Silver")
    layers["silver"] = {"step": r.step("silver", home=home)}
    touched = layers["silver"]["step"]["out"]["touched_event_dates"]
    layers["silver"]["gate"] = r.step(
        "gate", home=home, params={"table": DATASET, "layer": "silver", "scope": {"event_dates": touched}}
    )
    log("  Silver->Gold")
    layers["gold"] = {"step": r.step("gold", home=home, params={"touched": touched})}
    rng = layers["gold"]["step"]["out"]["recomputed"]
    layers["gold"]["gate"] = r.step("gate", home=home, params={"table": GOLD, "layer": "gold", "scope": {"range": rng}})
    for key, lay in layers.items():
        s, g = lay["step"], lay["gate"]
        lay["summary"] = {
            "rows": s["out"]["rows"],
            "seconds": s["seconds"],
            "rows_per_second": s["out"]["rows"] / s["seconds"] if s["seconds"] else None,
            "cpu_seconds": s["cpu_seconds"],
            "peak_rss_kb": s["peak_rss_kb"],
            "rss_after_imports_kb": s["rss_after_imports_kb"],
            "gate_seconds": g["seconds"],
            "gate_peak_rss_kb": g["peak_rss_kb"],
            "gate_success": g["out"]["success"],
            "gate_rows": g["out"]["rows"],
            "gate_share_of_layer": g["seconds"] / (s["seconds"] + g["seconds"]),
            "gate_over_step": g["seconds"] / s["seconds"] if s["seconds"] else None,
            "gate_import_seconds": g["import_seconds"],
        }
        log(
            f"  {key}: {s['seconds']:.1f} s, peak {mb(s['peak_rss_kb'])}; gate {g['seconds']:.1f} s "
            f"({'passed' if g['out']['success'] else 'FAILED'})"
        )
    res["layers"] = layers
    steps_total = sum(lay["summary"]["seconds"] for lay in layers.values())
    gates_total = sum(lay["summary"]["gate_seconds"] for lay in layers.values())
    res["totals"] = {
        "steps_seconds": round(steps_total, 3),
        "gates_seconds": round(gates_total, 3),
        "steps_over_floor": steps_total / med,
        "steps_and_gates_over_floor": (steps_total + gates_total) / med,
    }
    if rows in args.compaction_rows:
        res["compaction"] = run_compaction(r, rows, home, args)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return res


def run_compaction(r: StepRunner, rows: int, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    home = r.work / f"rows_{rows}_compaction"
    home.mkdir(parents=True, exist_ok=True)
    waves = args.waves
    log(f"  compaction: splitting the landing files into {waves} waves")
    split = r.step("split_waves", home=home, params={"source": str(source), "waves": waves})
    ingests = []
    for k in range(waves):
        for f in sorted((home / "waves" / str(k)).glob("*/*")):
            dst = home / "landing" / DATASET / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            f.rename(dst)
        ingests.append(r.step("bronze", home=home, params={"run_id": f"bench-wave-{k}"}))
        log(f"    wave {k + 1}/{waves}: ingest {ingests[-1]['seconds']:.1f} s")
    shutil.rmtree(home / "waves", ignore_errors=True)
    params = {"table": BRONZE_TABLE, "repeats": args.query_repeats}
    before = r.step("scan", home=home, params=params)
    cparams: dict[str, Any] = {"tables": [BRONZE_TABLE]}
    if args.compaction_min_files:
        cparams["min_files"] = args.compaction_min_files
    comp = r.step("compact", home=home, params=cparams)
    after = r.step("scan", home=home, params=params)
    log(
        f"    files {before['out']['table_files']} -> {after['out']['table_files']}, "
        f"scan {before['out']['total_median']:.3f} s -> {after['out']['total_median']:.3f} s"
    )
    out = {
        "waves": waves,
        "split": split["out"],
        "ingest_seconds": [i["seconds"] for i in ingests],
        "ingest_total_seconds": round(sum(i["seconds"] for i in ingests), 3),
        "ingest_peak_rss_kb": max(i["peak_rss_kb"] for i in ingests),
        "ingest_rows": sum(i["out"]["rows"] for i in ingests),
        "before": before["out"],
        "after": after["out"],
        "compact": {
            "seconds": comp["seconds"],
            "peak_rss_kb": comp["peak_rss_kb"],
            "cpu_seconds": comp["cpu_seconds"],
            "result": comp["out"],
            "profile": comp["profile"],
        },
        "ingest_profiles": [{"seconds": i["seconds"], "profile": i["profile"]} for i in ingests],
        "min_files_override": args.compaction_min_files,
    }
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return out


# ---------------------------------------------------------------------- report


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    m, dd = results["machine"], results["duckdb"]
    L: list[str] = []
    w = L.append
    w("=" * 110)
    w(f"Local lakehouse benchmark (bench/lakehouse.py), {results['started']}")
    w(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['platform']}; "
        f"load average at start {' / '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} (shared machine)"
    )
    w(
        f"versions: python {m['python']}, duckdb {m['duckdb']}, pyiceberg {m['pyiceberg']}, "
        f"great_expectations {m['great_expectations']}, pyarrow {m['pyarrow']}"
    )
    w(
        f"DuckDB (local.connect, every step and the floor): threads={dd['threads']} ({dd['threads_source']}), "
        f"memory_limit={dd['memory_limit']} ({dd['memory_source']}), spill to $MLB_HOME/tmp/duckdb"
    )
    defects = "DefectConfig.none() (clean data)" if args.defects == "none" else "DefectConfig() defaults"
    w(
        f"data: generate_fraud(start={START}, days={args.days}, seed=42, files_per_day=2, defects={defects}); "
        f"data set '{DATASET}' only (the only input of Gold '{GOLD}')"
    )
    w(
        f"method: all {args.days} landing dates as ONE interval: each layer processes every row in one call "
        "(the stress case). Every step/gate/floor runs in a fresh subprocess."
    )
    w("  wall s / cpu s = the library call only (interpreter start and imports excluded); rows/s = rows / wall s")
    w(
        "  peak RSS = the subprocess's ru_maxrss (os.wait4), interpreter and imports included; "
        "RSS@start = its VmHWM after imports, before the call"
    )
    w(
        "  gate = local.gate(...) (view registration + Great Expectations checkpoint + result files); "
        "gate share = gate s / (step s + gate s)"
    )
    w(
        f"  floor = DuckDB COPY of the same landing files to Parquet (zstd): read_csv(all_varchar, union_by_name) + "
        f"read_json(newline_delimited, all columns VARCHAR); median of {args.floor_repeats} runs"
    )
    for res in results["sizes"]:
        g = res["generate"]["out"]
        w("")
        w("-" * 110)
        w(
            f"{res['rows']:,} rows: {g['files']['csv']} CSV files ({g['bytes']['csv'] / 1e6:,.0f} MB) + "
            f"{g['files']['jsonl']} JSONL files ({g['bytes']['jsonl'] / 1e6:,.0f} MB), {g['landed_records']:,} "
            f"records landed; generated in {res['generate']['seconds']:.1f} s"
        )
        hdr = (
            f"{'step':<24}{'rows':>12}{'wall s':>9}{'rows/s':>11}{'cpu s':>8}{'peak RSS':>10}"
            f"{'RSS@start':>10} |{'gate s':>8}{'gate RSS':>10}{'gate share':>12}{'gate/step':>10}"
        )
        w(hdr)
        w("-" * len(hdr))
        fl = res["floor"]
        fr = fl["rows"] / fl["seconds"]
        w(
            f"{'floor (read+Parquet)':<24}{fl['rows']:>12,}{fl['seconds']:>9.2f}{fr:>11,.0f}{fl['cpu_seconds']:>8.1f}"
            f"{mb(fl['peak_rss_kb']):>10}{'':>10} |  runs: {', '.join(f'{x:.2f}' for x in fl['runs'])} s"
        )
        for key, label in LAYERS:
            s = res["layers"][key]["summary"]
            w(
                f"{label:<24}{s['rows']:>12,}{s['seconds']:>9.2f}{s['rows_per_second']:>11,.0f}{s['cpu_seconds']:>8.1f}"
                f"{mb(s['peak_rss_kb']):>10}{mb(s['rss_after_imports_kb']):>10} |{s['gate_seconds']:>8.2f}"
                f"{mb(s['gate_peak_rss_kb']):>10}{_pct(s['gate_share_of_layer']):>12}{_pct(s['gate_over_step']):>10}"
                + ("" if s["gate_success"] else "  GATE FAILED")
            )
        t = res["totals"]
        w(
            f"Bronze->Gold total: steps {t['steps_seconds']:.1f} s = {t['steps_over_floor']:.2f}x floor; "
            f"steps + gates {t['steps_seconds'] + t['gates_seconds']:.1f} s = {t['steps_and_gates_over_floor']:.2f}x floor"
        )
        gi = [res["layers"][k]["summary"]["gate_import_seconds"] for k, _ in LAYERS]
        w(
            f"(each gate subprocess also spends {min(gi):.1f}-{max(gi):.1f} s on imports, great_expectations included; "
            "not counted above)"
        )
        if "compaction" in res:
            w("")
            w(compaction_report(res["compaction"], res["rows"]))
    w("")
    w("-" * 110)
    w(targets_report(results))
    w("")
    w("-" * 110)
    w(profile_report(results))
    w("=" * 110)
    return "\n".join(L)


def compaction_report(c: dict[str, Any], rows: int) -> str:
    L: list[str] = []
    w = L.append
    res = c["compact"]["result"]["tables"].get(BRONZE_TABLE, {})
    settings = (
        f"min_files overridden to {c['min_files_override']} (uc.lakehouse.compaction.model_copy)"
        if c["min_files_override"]
        else "uc.lakehouse.compaction as configured in fraud_detection.yaml (min_files=4, small_file_fraction=0.5, "
        "target_file_size_mb=128: a partition is rewritten when it has >= 4 files < 64 MB)"
    )
    w(f"Compaction, {rows:,} rows: table {BRONZE_TABLE}")
    w(
        f"  setup: each landing file cut into {c['waves']} contiguous pieces (CSV header repeated), landed in "
        f"{c['waves']} waves; ingest_bronze over all dates once per wave -> one new file per landing-date partition "
        f"per wave"
    )
    w(
        f"  ingest in {c['waves']} waves: {c['ingest_total_seconds']:.1f} s in total "
        f"({', '.join(f'{x:.1f}' for x in c['ingest_seconds'])}), {c['ingest_rows']:,} rows"
    )
    w(f"  settings: {settings}")
    w(f"  scan query (DuckDB over iceberg.register_view of the table): {SCAN_SQL}")
    w(
        f"  {'':<8}{'files':>7}{'partitions':>11}{'max/part':>9}{'avg file':>10}{'snapshots':>10}{'manifests':>10}"
        f"{'plan s':>9}{'query s':>9}{'total s':>9}{'rows':>12}"
    )
    for label in ("before", "after"):
        s = c[label]
        avg = s["table_bytes"] / max(1, s["table_files"]) / 1e6
        w(
            f"  {label:<8}{s['table_files']:>7}{s['table_partitions']:>11}{s['table_max_files_per_partition']:>9}"
            f"{avg:>8.1f}MB{s['table_snapshots']:>10}{s['table_manifests']:>10}"
            f"{s['plan_median']:>9.3f}{s['query_median']:>9.3f}{s['total_median']:>9.3f}{s['rows']:>12,}"
        )
    w(
        f"  (plan = catalog load + pyiceberg scan planning + view; query = the SQL; medians of "
        f"{len(c['before']['plan_seconds'])} runs, each on a fresh connection; manifests = of the current snapshot)"
    )
    b, a = c["before"], c["after"]
    w(
        f"  compact(): {c['compact']['seconds']:.1f} s, peak RSS {mb(c['compact']['peak_rss_kb'])}, "
        f"partitions compacted {res.get('partitions_compacted', 0)}, files rewritten {res.get('files_rewritten', 0)} -> "
        f"written {res.get('files_written', 0)}; same rows and amount: "
        f"{'yes' if (b['rows'], b['amount']) == (a['rows'], a['amount']) else 'NO'}; "
        f"scan speed-up {b['total_median'] / a['total_median']:.1f}x (query only {b['query_median'] / a['query_median']:.1f}x)"
    )

    def meta(p: dict[str, Any]) -> float:
        return sum(x["seconds"] for x in p["profile"]["calls"] if x["what"].startswith("pyiceberg Transaction.d"))

    def adds(p: dict[str, Any]) -> float:
        return sum(x["seconds"] for x in p["profile"]["calls"] if x["what"].startswith("pyiceberg Transaction.a"))

    w1, wn = c["ingest_profiles"][0], c["ingest_profiles"][-1]
    w(
        f"  small files also cost every later commit: ingest wave 1 took {w1['seconds']:.1f} s (pyiceberg delete "
        f"{meta(w1):.1f} s + add_files {adds(w1):.1f} s), wave {c['waves']} {wn['seconds']:.1f} s (delete {meta(wn):.1f} s "
        f"+ add_files {adds(wn):.1f} s) for the same rows; compaction leaves {a['table_manifests']} manifest(s) "
        f"instead of {b['table_manifests']}, but {a['table_snapshots']} snapshots remain (compact() expires only snapshots older than lakehouse.snapshot_retention_days)"
    )
    return "\n".join(L)


def _size_kb(text: str) -> float | None:
    """DuckDB memory_limit text ('2GB', '512MiB', ...) in kB (DuckDB: KB/MB/GB are powers of 1000)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B)\s*", text, re.IGNORECASE)
    if not m:
        return None
    unit = m.group(2).upper()
    base = 1024 if "I" in unit else 1000
    return float(m.group(1)) * base ** "KMGT".index(unit[0]) * base / 1024


def targets_report(results: dict[str, Any]) -> str:
    L = ["Targets"]
    sizes = results["sizes"]
    big, small = sizes[-1], sizes[0]
    limit_kb = _size_kb(results["duckdb"]["memory_limit"])
    if len(sizes) > 1:
        factor = big["rows"] / small["rows"]
        L.append(
            f"  peak RSS bounded?  cap = DuckDB memory_limit {results['duckdb']['memory_limit']} + RSS@start "
            "+ 512 MB for allocations outside DuckDB's buffer manager (Arrow, Python)"
        )
        for key, label in LAYERS:
            a, b = small["layers"][key]["summary"], big["layers"][key]["summary"]
            ratio = b["peak_rss_kb"] / a["peak_rss_kb"]
            if limit_kb is None:
                verdict = "cap unknown"
            elif b["peak_rss_kb"] <= limit_kb + b["rss_after_imports_kb"] + 512 * 1024:
                near = b["peak_rss_kb"] >= 0.8 * (limit_kb + b["rss_after_imports_kb"])
                verdict = "PASS: bounded" + (", at the memory_limit (set by config, not by rows)" if near else "")
            else:
                verdict = "FAIL: above memory_limit, grows with rows"
            L.append(
                f"  peak RSS {label:<16} {mb(a['peak_rss_kb']):>9} at {small['rows']:,} -> {mb(b['peak_rss_kb']):>9} at "
                f"{big['rows']:,}: x{ratio:.2f} for x{factor:.0f} rows; cap {mb((limit_kb or 0) + b['rss_after_imports_kb'] + 512 * 1024)}"
                f" -> {verdict}"
            )
    for res in sizes:
        t = res["totals"]
        ok1 = t["steps_over_floor"] <= 4
        ok2 = t["steps_and_gates_over_floor"] <= 4
        L.append(
            f"  {res['rows']:>12,} rows: Bronze->Gold / floor = {t['steps_over_floor']:.2f}x steps only "
            f"({'PASS' if ok1 else 'FAIL'} <= 4x), {t['steps_and_gates_over_floor']:.2f}x with gates "
            f"({'PASS' if ok2 else 'FAIL'} <= 4x)"
        )
        for key, label in LAYERS:
            s = res["layers"][key]["summary"]
            imp = s["gate_import_seconds"]
            with_import = (s["gate_seconds"] + imp) / (s["seconds"] + s["gate_seconds"] + imp)
            L.append(
                f"  {res['rows']:>12,} rows: {label:<16} gate share {_pct(s['gate_share_of_layer']):>7} of step+gate, "
                f"{_pct(s['gate_over_step']):>7} of step -> {'PASS' if s['gate_share_of_layer'] < 0.3 else 'FAIL'} (< 30 %)"
                f"   [{_pct(with_import)} if the gate process's imports ({imp:.1f} s, great_expectations included) count]"
            )
    return "\n".join(L)


def profile_report(results: dict[str, Any]) -> str:
    L = ["Where the time goes (instrumented in the step subprocess; inclusive times, nested entries overlap)"]
    for res in results["sizes"]:
        items = [(label, res["layers"][key]["step"]) for key, label in LAYERS]
        items += [(f"gate {key}", res["layers"][key]["gate"]) for key, _ in LAYERS]
        if "compaction" in res:
            c = res["compaction"]
            waves = c["ingest_profiles"]
            items.append(("compaction: ingest wave 1", waves[0]))
            items.append((f"compaction: ingest wave {len(waves)}", waves[-1]))
            items.append(("compact()", c["compact"]))
        for label, st in items:
            total = st["seconds"]
            L.append(f"  {res['rows']:,} rows, {label}: {total:.2f} s")
            calls = [c for c in st["profile"]["calls"] if c["seconds"] >= 0.03 * total][:8]
            sql = [c for c in st["profile"]["sql"] if c["seconds"] >= 0.03 * total][:6]
            for c in calls:
                L.append(
                    f"      {c['seconds']:8.2f} s {100 * c['seconds'] / total:5.1f} %  x{c['count']:<4} {c['what']}"
                )
            for c in sql:
                L.append(
                    f"      {c['seconds']:8.2f} s {100 * c['seconds'] / total:5.1f} %  x{c['count']:<4} SQL {c['what']}"
                )
    return "\n".join(L)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="sizes (generated rows)")
    ap.add_argument("--days", type=int, default=30, help="landing days (default 30)")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--defects", choices=["none", "default"], default="none", help="generator defects (default none)")
    ap.add_argument("--floor-repeats", type=int, default=3)
    ap.add_argument(
        "--waves", type=int, default=4, help="compaction section: ingest waves = files per partition (default 4)"
    )
    ap.add_argument("--query-repeats", type=int, default=5)
    ap.add_argument(
        "--compaction-rows", type=int, nargs="*", help="sizes that get the compaction section (default: all)"
    )
    ap.add_argument("--compaction-min-files", type=int, help="override compaction.min_files (default: as configured)")
    ap.add_argument("--workdir", help="where to put the per-size MLB_HOMEs (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and tables")
    args = ap.parse_args(argv)
    if args.compaction_rows is None:
        args.compaction_rows = list(args.rows)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-lakehouse-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # the lineage of a write records a git commit; a fixed value keeps the steps from running git
    env = {"MLB_GIT_COMMIT": os.environ.get("MLB_GIT_COMMIT", "bench")}
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": machine_facts("duckdb", "pyiceberg", "great_expectations", "pyarrow"),
        "duckdb": duckdb_settings(),
        "workdir": str(work),
        "sizes": [],
    }
    log(f"work dir {work}")
    r = StepRunner(SCRIPT, work, env)
    with recorded(results, work, args):
        for rows in args.rows:
            results["sizes"].append(run_size(r, rows, args))
    print(report(results, args))
    print(f"total benchmark time {results['elapsed_seconds']:.0f} s" + (f"; JSON: {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        child_main(*sys.argv[2:5])
    else:
        sys.exit(main(sys.argv[1:]))
