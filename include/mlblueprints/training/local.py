"""The local "training job": ``train.py`` as a subprocess under the SageMaker script-mode contract.

:func:`run_training_job` lays out a job directory the way SageMaker lays out ``/opt/ml``::

    <job_dir>/input/config/hyperparameters.json   every value JSON-encoded, exactly as CreateTrainingJob carries it
    <job_dir>/input/config/resourceconfig.json    one host, algo-1
    <job_dir>/input/config/inputdataconfig.json   one channel, train
    <job_dir>/model/                              SM_MODEL_DIR (xgboost-model: the booster alone, as served)
    <job_dir>/output/data/                        SM_OUTPUT_DATA_DIR (model_meta.json, training_metrics.json)
    <job_dir>/output/failure                      the failure reason, when the script fails
    <job_dir>/checkpoints/                        SM_CHECKPOINT_DIR unless ``checkpoint_dir`` is given

sets the ``SM_*`` environment, runs the script with the given interpreter, streams its output to
this module's logger and returns what it produced. The checkpoint directory must outlive a task
try (pass a stable path): a rerun after an interruption resumes from it. ``model/`` and
``output/`` are emptied at the start of each run, so they never mix two tries.

No heavy import: the training step imports this at run time, DAG parsing never does.

:class:`LocalTrainer` is the trainer capability of the local target (``mlblueprints.backends.Trainer``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlblueprints.training import ENTRY_POINT, SCRIPT_DIR
from mlblueprints.training.core import decode_hyperparameters, encode_hyperparameters

log = logging.getLogger(__name__)

CURRENT_HOST = "algo-1"
CHANNEL = "train"
PROGRESS_RE = re.compile(r"^round (\d+)/(\d+)\b")
EXIT_INTERRUPTED = 143
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
# how long an interrupted caller waits for the script to write its SIGTERM checkpoint
TERMINATE_GRACE_SECONDS = 60.0


class TrainingError(RuntimeError):
    """The training process did not finish; ``result`` is what :func:`run_training_job` would return."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


class TrainingInterrupted(TrainingError):
    """Stopped by SIGTERM (exit 143, after a checkpoint) or killed by SIGKILL: a rerun resumes."""

    one_line = True  # expected (a Spot interruption): logs say it in one line, no traceback


class TrainingFailed(TrainingError):
    """Exited non-zero for another reason (bad data or hyperparameters, a crash, a timeout)."""


def _arg(value: Any) -> str:
    """A hyperparameter as a command-line argument (``--name value``), as the toolkit passes it."""
    return value if isinstance(value, str) else json.dumps(value)


def training_env(
    job_dir: Path,
    train_dir: Path,
    hyperparameters: Mapping[str, Any],
    checkpoint_dir: Path,
    script: Path = SCRIPT_DIR / ENTRY_POINT,
) -> dict[str, str]:
    """The ``SM_*`` variables SageMaker's training toolkit would set for this job (plus ours)."""
    hps = encode_hyperparameters(hyperparameters)
    decoded = decode_hyperparameters(hps)
    dirs = {
        "model_dir": job_dir / "model",
        "output_dir": job_dir / "output",
        "output_data_dir": job_dir / "output" / "data",
        "output_intermediate_dir": job_dir / "output" / "intermediate",
        "input_dir": job_dir / "input",
        "input_config_dir": job_dir / "input" / "config",
    }
    resource_config = {"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST], "network_interface_name": "eth0"}
    input_data_config = {CHANNEL: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}
    num_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {
        "SM_HPS": json.dumps(decoded, sort_keys=True),
        "SM_CHANNELS": json.dumps([CHANNEL]),
        f"SM_CHANNEL_{CHANNEL.upper()}": str(train_dir),
        "SM_CHECKPOINT_DIR": str(checkpoint_dir),
        "SM_CURRENT_HOST": CURRENT_HOST,
        "SM_HOSTS": json.dumps([CURRENT_HOST]),
        "SM_NUM_CPUS": str(num_cpus),
        "SM_NUM_GPUS": "0",
        "SM_USER_ENTRY_POINT": script.name,
        "SM_MODULE_NAME": script.stem,
        "SM_MODULE_DIR": str(script.parent),
        "SM_LOG_LEVEL": "20",
        "SM_RESOURCE_CONFIG": json.dumps(resource_config),
        "SM_INPUT_DATA_CONFIG": json.dumps(input_data_config),
        "SM_USER_ARGS": json.dumps([a for k, v in sorted(decoded.items()) for a in (f"--{k}", _arg(v))]),
        **{f"SM_{k.upper()}": str(v) for k, v in dirs.items()},
    }
    for key, value in decoded.items():
        env[f"SM_HP_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["SM_TRAINING_ENV"] = json.dumps(
        {
            "channel_input_dirs": {CHANNEL: str(train_dir)},
            "current_host": CURRENT_HOST,
            "hosts": [CURRENT_HOST],
            "hyperparameters": decoded,
            "input_data_config": input_data_config,
            "job_name": job_dir.name,
            "log_level": 20,
            "module_name": script.stem,
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "resource_config": resource_config,
            "user_entry_point": script.name,
            **{k: str(v) for k, v in dirs.items()},
        },
        sort_keys=True,
    )
    return env


def write_input_config(config_dir: Path, hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """``/opt/ml/input/config`` as SageMaker writes it: ``hyperparameters.json`` holds every value
    encoded by the one codec (:func:`mlblueprints.training.core.encode_hyperparameters`), exactly
    the strings CreateTrainingJob carries on aws. Returns those strings."""
    hps = encode_hyperparameters(hyperparameters)
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(hps, indent=1, sort_keys=True))
    (config_dir / "resourceconfig.json").write_text(json.dumps({"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST]}))
    (config_dir / "inputdataconfig.json").write_text(json.dumps({CHANNEL: {"TrainingInputMode": "File"}}))
    return hps


def _check_interrupt(interrupt: Mapping[str, Any] | None) -> tuple[str, float | None, int | None] | None:
    if interrupt is None:
        return None
    unknown = set(interrupt) - {"signal", "after_seconds", "after_rounds"}
    if unknown:
        raise ValueError(f"interrupt: unknown key(s) {sorted(unknown)}")
    name = str(interrupt.get("signal", "")).upper()
    if name not in SIGNALS:
        raise ValueError(f"interrupt.signal must be one of {sorted(SIGNALS)}, got {interrupt.get('signal')!r}")
    after_s, after_r = interrupt.get("after_seconds"), interrupt.get("after_rounds")
    if (after_s is None) == (after_r is None):
        raise ValueError("interrupt: give exactly one of after_seconds and after_rounds")
    return name, (float(after_s) if after_s is not None else None), (int(after_r) if after_r is not None else None)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


class _Process:
    """A running script: output pumped to the logger, optional signal on a progress round."""

    def __init__(self, popen: subprocess.Popen[str], signal_after_round: tuple[str, int] | None):
        self.popen = popen
        self.signal_after_round = signal_after_round
        self.sent: str | None = None
        self.last_round = 0
        self.first_round: int | None = None  # the first progress round this process reported
        self.stdout_tail: deque[str] = deque(maxlen=200)
        self.stderr_tail: deque[str] = deque(maxlen=60)
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._pump, args=(popen.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(popen.stderr, True), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def send(self, name: str) -> None:
        with self._lock:
            if self.sent is not None or self.popen.poll() is not None:
                return
            self.sent = name
            log.info("training job: sending %s to pid %d (round %d seen)", name, self.popen.pid, self.last_round)
            try:
                self.popen.send_signal(SIGNALS[name])
            except ProcessLookupError:
                pass

    def _pump(self, stream: Any, is_stderr: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            if is_stderr:
                self.stderr_tail.append(line)
                log.warning("train.py: %s", line)
                continue
            self.stdout_tail.append(line)
            log.info("train.py: %s", line)
            m = PROGRESS_RE.match(line)
            if m:
                self.last_round = int(m.group(1))
                if self.first_round is None:
                    self.first_round = self.last_round
                if self.signal_after_round and self.last_round >= self.signal_after_round[1]:
                    self.send(self.signal_after_round[0])
        stream.close()

    def join(self, timeout: float = 10.0) -> None:
        for t in self.threads:
            t.join(timeout)


def run_training_job(
    job_dir: Path,
    train_dir: Path,
    hyperparameters: dict,
    *,
    checkpoint_dir: Path | None = None,
    interrupt: dict | None = None,
    timeout: float | None = None,
    python: str = sys.executable,
    env: Mapping[str, str | None] | None = None,
    script: Path | None = None,
) -> dict:
    """Run ``train.py`` locally as SageMaker would run it; return what it produced.

    ``hyperparameters`` are the job's (``features`` may be a list; see ``train.py`` for the keys).
    ``interrupt={"signal": "SIGTERM" | "SIGKILL", "after_seconds": s}`` or ``{..., "after_rounds":
    n}`` (when the script reports round ``n`` done) simulates a Spot interruption. ``timeout``
    kills the script (SIGKILL) and fails. ``env`` overrides the environment of the script (a
    ``None`` value removes a variable, e.g. ``{"SM_HPS": None}`` to make it read
    hyperparameters.json).

    Returns ``{exit_code, model_dir, output_dir (SM_OUTPUT_DATA_DIR), checkpoint_dir, meta,
    metrics, seconds, interrupted, last_round, checkpoints}``; ``meta`` is the parsed
    ``model_meta.json`` (``None`` unless the run succeeded), ``metrics`` the parsed
    ``training_metrics.json`` (also written on a SIGTERM stop), ``interrupted`` the name of the
    signal that stopped it (or was sent to it), ``checkpoints`` the checkpoint directory's
    ``ckpt-*`` names after the run, ``first_round``/``last_round`` the first and last
    ``round <done>/<total>`` progress line the script printed (a resumed run starts past 1).

    Raises :class:`TrainingInterrupted` (SIGTERM exit 143, or killed by SIGKILL) or
    :class:`TrainingFailed` (any other non-zero exit, with the stderr tail; a timeout). If the
    caller itself is interrupted (an exception while waiting, e.g. the Airflow task being
    terminated), the script gets SIGTERM and up to a minute to checkpoint before the exception
    propagates.
    """
    job_dir = Path(job_dir).resolve()
    train_dir = Path(train_dir).resolve()
    ckpt_dir = Path(checkpoint_dir).resolve() if checkpoint_dir is not None else job_dir / "checkpoints"
    model_dir, output_dir = job_dir / "model", job_dir / "output"
    output_data_dir, config_dir = output_dir / "data", job_dir / "input" / "config"
    for d in (model_dir, output_dir):
        if _inside(ckpt_dir, d):
            raise ValueError(f"checkpoint_dir {ckpt_dir} must not be inside {d} (emptied on every run)")
    spec = _check_interrupt(interrupt)
    if not train_dir.is_dir():
        raise ValueError(f"train_dir {train_dir} is not a directory")

    for d in (model_dir, output_dir):
        shutil.rmtree(d, ignore_errors=True)
    for d in (model_dir, output_data_dir, output_dir / "intermediate", config_dir, ckpt_dir):
        d.mkdir(parents=True, exist_ok=True)
    write_input_config(config_dir, hyperparameters)

    child_env = dict(os.environ)
    script = Path(script) if script is not None else SCRIPT_DIR / ENTRY_POINT
    child_env.update(training_env(job_dir, train_dir, hyperparameters, ckpt_dir, script))
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["MLB_PARENT_PID"] = str(os.getpid())  # the script asks to get SIGTERM if we die
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value

    log.info("training job %s: %s %s (checkpoints in %s)", job_dir.name, python, script, ckpt_dir)
    t0 = time.monotonic()
    popen = subprocess.Popen(
        [python, str(script)],
        cwd=str(job_dir),
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    sig_name, after_s, after_r = spec if spec else (None, None, None)
    proc = _Process(popen, (sig_name, after_r) if sig_name and after_r is not None else None)
    signal_at = t0 + after_s if sig_name and after_s is not None else None
    deadline = t0 + timeout if timeout is not None else None
    timed_out = False
    try:
        while True:
            pending = [t for t in (signal_at if proc.sent is None else None, deadline) if t is not None]
            wait = max(0.0, min(pending) - time.monotonic()) if pending else None
            try:
                rc = popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if signal_at is not None and now >= signal_at:
                    proc.send(sig_name)  # type: ignore[arg-type]
                    signal_at = None
                if deadline is not None and now >= deadline and not timed_out:
                    log.error("training job %s: timed out after %.0f s; killing it", job_dir.name, timeout)
                    timed_out = True
                    popen.kill()
                    deadline = None
    except BaseException:
        _terminate(popen)
        proc.join()
        raise
    proc.join()
    seconds = time.monotonic() - t0

    interrupted = proc.sent
    if interrupted is None and rc in (EXIT_INTERRUPTED, -signal.SIGTERM):
        interrupted = "SIGTERM"
    elif interrupted is None and rc == -signal.SIGKILL and not timed_out:
        interrupted = "SIGKILL"
    checkpoints = sorted(p.name for p in ckpt_dir.glob("ckpt-*")) if ckpt_dir.is_dir() else []
    result: dict[str, Any] = {
        "exit_code": rc,
        "model_dir": str(model_dir),
        "output_dir": str(output_data_dir),
        "checkpoint_dir": str(ckpt_dir),
        "meta": _read_json(output_data_dir / "model_meta.json") if rc == 0 else None,  # the built-in script's
        "metrics": _read_json(output_data_dir / "training_metrics.json"),
        "seconds": round(seconds, 3),
        "interrupted": interrupted,
        "last_round": proc.last_round,
        "first_round": proc.first_round,
        "checkpoints": checkpoints,
    }
    if rc == 0:
        log.info("training job %s: done in %.1f s", job_dir.name, seconds)
        return result
    stderr_tail = "\n".join(list(proc.stderr_tail)[-20:])
    result["stderr_tail"] = stderr_tail
    if timed_out:
        raise TrainingFailed(f"training job {job_dir.name} timed out after {timeout:g} s", result)
    if rc in (EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGKILL):
        how = "stopped by SIGTERM" if rc != -signal.SIGKILL else "killed by SIGKILL"
        # the built-in script's ckpt-* directories; whatever else a team's own script keeps there
        other = sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")) if ckpt_dir.is_dir() else []
        last = checkpoints[-1] if checkpoints else (", ".join(other[:3]) or "none")
        raise TrainingInterrupted(
            f"training job {job_dir.name} {how} after round {proc.last_round} (newest checkpoint: {last}); "
            "a rerun with the same checkpoint_dir resumes",
            result,
        )
    raise TrainingFailed(f"training job {job_dir.name} failed with exit code {rc}:\n{stderr_tail}", result)


def _terminate(popen: subprocess.Popen[str]) -> None:
    """SIGTERM (the script checkpoints and exits), SIGKILL if it does not exit within the grace period."""
    if popen.poll() is not None:
        return
    try:
        popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ the backend


class LocalTrainer:
    """The trainer capability on the local target: the training script as a local process."""

    def __init__(self, uc: Any):
        self.uc = uc

    def train(self, tset: dict[str, Any], job_dir: Path, run: Any, interrupt: dict[str, Any] | None) -> dict[str, Any]:
        """Split the training set by time, run the training job (try ``run.try_number`` in
        ``<job_dir>/try-<n>``, checkpoints in ``<job_dir>/checkpoints``, shared by the tries so a
        retry resumes). ``interrupt`` simulates a Spot interruption (first try only)."""
        from mlblueprints.training import dataset
        from mlblueprints.training.core import hyperparameters

        jd = Path(job_dir)
        try_number = int(run.try_number or 1)
        data = dataset.split(self.uc, tset["snapshot_id"], jd)
        if not interrupt or not interrupt.get("signal") or try_number > 1:
            interrupt = None
        out = run_training_job(
            jd / f"try-{try_number}",
            jd / "train",
            hyperparameters(self.uc),
            checkpoint_dir=jd / "checkpoints",
            interrupt=interrupt,
            script=self.uc.entry_point_path(),
        )
        return {
            "job_name": f"{self.uc.name}-{jd.name}-try{try_number}",
            "try_number": try_number,
            "model_dir": str(out["model_dir"]),
            "meta": out["meta"] or _meta_of(Path(out["model_dir"]), self.uc, out),
            "metrics": out.get("metrics") or {},
            "seconds": out["seconds"],
            "data": data,
            "job_dir": str(jd),
        }

    def ensure_local(self, trained: dict[str, Any]) -> None:
        """The model and holdout of a local job are on this machine already."""


def _meta_of(model_dir: Path, uc: Any, out: dict[str, Any]) -> dict[str, Any]:
    """What is known of a model a team's own script wrote (the built-in script writes its own
    meta): its files, and from its ``round <done>/<total>`` lines (if it prints them) how far it
    got and the first round this process reported (past the first when it resumed)."""
    t = uc.training
    first, last = out.get("first_round"), out.get("last_round") or None
    return {
        "format": f"{t.format} (written by {uc.entry_point_path().name})",
        "files": sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else [],
        "rounds": last,
        "first_round_reported": first,
        "resumed_from_round": None,  # only the script knows; see first_round_reported
        "rounds_trained_in_this_process": None,
    }
