"""The trainer on the aws target: a SageMaker training job with managed Spot.

:meth:`AwsTrainer.train` prepares the job in the worker and returns a
:class:`~mlblueprints.core.service.ServiceCall` of kind ``sagemaker_training``: it splits the
training set by time (:func:`mlblueprints.training.dataset.split_parquet`), uploads the train
split (the ``train`` channel, one prefix per run and training-set content), the holdout (so
another worker can evaluate) and the code archive of ``mlblueprints/training/script/``
(reproducible ``.tar.gz``, content-addressed, SSE-KMS, tagged with the git commit), and builds
the CreateTrainingJob request with the pure builders of :mod:`mlblueprints.aws.training`:
managed Spot, ``CheckpointConfig`` per run and training-set content (a retry resumes from the
checkpoints of the try before), KMS on volume and output, network isolation.

The orchestrator runs the job (in a DAG: ``TrainingJobOperator``, the provider's training
operator, deferrable, with a name unique per try and an adoption check for earlier tries'
jobs); :meth:`AwsTrainer.resume_train` then downloads ``ModelArtifacts.S3ModelArtifacts`` into
``<job dir>/try-<n>/model/``, where the target-agnostic evaluate step finds the booster
(``xgboost-model``, the one file the built-in script leaves there: the archive is what the
SageMaker XGBoost image serves) and the script's ``model_meta.json`` from the output data. Spot savings (:func:`~mlblueprints.aws.training.spot_savings`)
are in the returned metrics. :meth:`AwsTrainer.ensure_local` restores model and holdout on a
worker that did not run the job's tasks.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.aws import requests as req
from mlblueprints.aws import s3io
from mlblueprints.aws import training as tr
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase
from mlblueprints.core.naming import safe
from mlblueprints.core.service import SAGEMAKER_TRAINING, ServiceCall
from mlblueprints.features import core
from mlblueprints.lineage import RunInfo
from mlblueprints.training import SCRIPT_DIR
from mlblueprints.training.core import (
    BOOSTER_FILES,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    hyperparameters,
    source_archive,
)

log = logging.getLogger(__name__)


class AwsTrainer:
    """The trainer capability on the aws target (``mlblueprints.backends.Trainer``)."""

    script_dir: Path = SCRIPT_DIR

    def __init__(self, uc: UseCase, rt: AwsRuntime):
        if uc.aws is None or uc.training is None:
            raise ValueError(f"{uc.name}: training on the aws target needs the aws and training sections")
        self.uc = uc
        self.aws = uc.aws
        self.rt = rt

    def _training_set_file(self, ts: dict[str, Any], jd: Path) -> Path:
        """The training set under the job dir; downloaded again when this worker does not have it
        (another worker ran the training-set step) or it is not the one ``ts`` names."""
        local = Path(ts.get("local_path") or jd / "training_set" / f"{core.training_table(ts['training_set'])}.parquet")
        if local.is_file() and s3io.sha256_file(local) == ts["sha256"]:
            return local
        local = jd / "training_set" / f"{core.training_table(ts['training_set'])}.parquet"
        s3io.download(self.rt.client("s3"), ts["s3_uri"], local)
        got = s3io.sha256_file(local)
        if got != ts["sha256"]:
            raise RuntimeError(f"{ts['s3_uri']} has sha256 {got}, the training-set step wrote {ts['sha256']}")
        return local

    def train(self, tset: dict[str, Any], job_dir: Path, run: RunInfo, interrupt: dict[str, Any] | None) -> ServiceCall:
        """Split, upload, build the CreateTrainingJob request (module docstring). ``interrupt``
        is a local simulation; on aws, Spot interrupts for real."""
        from mlblueprints.training import dataset

        uc, aws = self.uc, self.aws
        jd = Path(job_dir)
        s3 = self.rt.client("s3")
        path = self._training_set_file(tset, jd)
        data = dataset.split_parquet(uc, path, jd)
        data_key = f"{safe(run.run_id)}/{tset['sha256'][:16]}"  # per run and training-set content
        train_s3_uri = aws.s3_uri("training", "data", data_key, tr.TRAIN_CHANNEL) + "/"
        s3io.put_file(s3, jd / "train" / "train.parquet", train_s3_uri + "train.parquet", aws, tr.TRAIN_CONTENT_TYPE)
        holdout_s3_uri = aws.s3_uri("training", "data", data_key, "holdout", "holdout.parquet")
        s3io.put_file(s3, jd / "holdout" / "holdout.parquet", holdout_s3_uri, aws, tr.TRAIN_CONTENT_TYPE)

        script = uc.entry_point_path()  # the built-in script, or the team's own (its directory is the source)
        script_dir = self.script_dir if self.uc.training.entry_point is None else script.parent
        code, code_sha = source_archive(script_dir, script.name)
        key = tr.source_archive_key(uc, code_sha)
        s3.put_object(Body=code, **tr.s3_put_source_request(uc, key, run.git_commit))
        source_s3_uri = f"s3://{aws.bucket}/{key}"
        checkpoint_s3_uri = tr.checkpoint_s3_uri(uc, f"{run.run_id}#{tset['sha256'][:16]}")
        request = tr.create_training_job_request(
            uc,
            job_name=tr.training_job_name(uc, run.run_id, 1),  # the service task names each try's job
            train_s3_uri=train_s3_uri,
            source_s3_uri=source_s3_uri,
            output_s3_uri=tr.output_s3_uri(uc),
            checkpoint_s3_uri=checkpoint_s3_uri,
            hyperparameters=hyperparameters(uc),
            git_commit=run.git_commit,
            run=run.as_dict(),
        )
        state = {
            "data": data,
            "job_dir": str(jd),
            "train_s3_uri": train_s3_uri,
            "holdout_s3_uri": holdout_s3_uri,
            "source_s3_uri": source_s3_uri,
            "checkpoint_s3_uri": checkpoint_s3_uri,
            "started": time.time(),
        }
        return ServiceCall(SAGEMAKER_TRAINING, request, "trainer", "resume_train", state)

    def resume_train(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        """After the job: fetch its model (and output data), report Spot savings."""
        desc = output["Training"]
        job = desc["TrainingJobName"]
        jd = Path(state["job_dir"])
        try_number = tr.try_of_job(self.uc, desc)
        model_dir, meta, script_metrics = self._fetch_model(desc, jd / f"try-{try_number}")
        savings = tr.spot_savings(desc)
        final = {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList") or [] if "Value" in m}
        log.info(
            "training job %s (%s): %s; Spot saved %.0f%% (%s of %s s billed)",
            job,
            output.get("how", "created"),
            desc["TrainingJobStatus"],
            100 * savings["savings_fraction"],
            savings["billable_seconds"],
            savings["training_seconds"],
        )
        return {
            "job_name": job,
            "try_number": try_number,
            "model_dir": str(model_dir),
            "meta": meta,
            "metrics": {**script_metrics, "final_metric_data": final, "spot_savings": savings},
            "seconds": round(time.time() - float(state["started"]), 3),
            "data": state["data"],
            "job_dir": str(jd),
            "job": output.get("how", "created"),
            "training_job_arn": desc.get("TrainingJobArn"),
            "model_data_url": desc["ModelArtifacts"]["S3ModelArtifacts"],
            "train_s3_uri": state["train_s3_uri"],
            "holdout_s3_uri": state["holdout_s3_uri"],
            "source_s3_uri": state["source_s3_uri"],
            "checkpoint_s3_uri": state["checkpoint_s3_uri"],
        }

    def _fetch_model(self, desc: dict[str, Any], try_dir: Path) -> tuple[Path, dict[str, Any], dict]:
        """Download and extract the job's model (and its output data, when there is any);
        returns (model_dir, meta, metrics written by the script)."""
        from mlblueprints.training.models import load_booster

        s3 = self.rt.client("s3")
        model_uri = desc["ModelArtifacts"]["S3ModelArtifacts"]
        model_dir, output_dir = try_dir / "model", try_dir / "output"
        try_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
            archive = Path(tmp) / "model.tar.gz"
            s3.download_file(*req.split_s3_uri(model_uri), str(archive))
            s3io.extract_tar(archive, model_dir)
            output_uri = model_uri.rsplit("/", 1)[0] + "/output.tar.gz"  # /opt/ml/output/data
            if s3io.exists(s3, output_uri):
                out_archive = Path(tmp) / "output.tar.gz"
                s3.download_file(*req.split_s3_uri(output_uri), str(out_archive))
                s3io.extract_tar(out_archive, output_dir)

        def read(fname: str) -> dict[str, Any] | None:
            for d in (model_dir, output_dir):
                if (d / fname).is_file():
                    return json.loads((d / fname).read_text())
            return None

        fmt = self.uc.training.format
        if fmt != "xgboost":  # a team's own script: the evaluate step loads it by its declared format
            meta = read(META_FILE) or {"format": fmt, "rounds": None, "resumed_from_round": None}
            return model_dir, meta, read(METRICS_FILE) or {}
        found = next((model_dir / f for f in (MODEL_FILE, *BOOSTER_FILES) if (model_dir / f).is_file()), None)
        if found is None:
            raise RuntimeError(
                f"{model_uri} holds no booster ({MODEL_FILE} or one of {', '.join(BOOSTER_FILES)}): "
                f"{sorted(p.name for p in model_dir.iterdir())}"
            )
        booster = load_booster(found)
        meta = read(META_FILE) or {
            "rounds": booster.num_boosted_rounds(),
            "resumed_from_round": None,
            "source": "booster (the archive has no model_meta.json)",
        }
        return model_dir, meta, read(METRICS_FILE) or {}

    def ensure_local(self, trained: dict[str, Any]) -> None:
        """Put the model and the holdout of ``trained`` back under its job dir when this worker does
        not have them: on MWAA / Celery the evaluate and register steps may run on another worker."""
        from mlblueprints.training.models import detect_format

        model_dir = Path(trained["model_dir"])
        holdout = Path(trained["job_dir"]) / "holdout" / "holdout.parquet"
        have_model = model_dir.is_dir() and detect_format(model_dir) is not None
        if have_model and holdout.is_file():
            return
        if not have_model:
            self._fetch_model({"ModelArtifacts": {"S3ModelArtifacts": trained["model_data_url"]}}, model_dir.parent)
        if not holdout.is_file():
            s3io.download(self.rt.client("s3"), trained["holdout_s3_uri"], holdout)
