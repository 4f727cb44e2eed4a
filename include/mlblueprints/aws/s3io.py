"""Thin S3 I/O shared by the aws backends: every upload SSE-KMS with the use case's key (bucket
keys on), downloads verified, prefixes listed and cleaned. No logic beyond that.

Every call goes through a client of the runtime (:class:`~mlblueprints.aws.session.AwsRuntime`),
which adds ``ExpectedBucketOwner`` to each S3 request. Uploads larger than
:data:`PUT_OBJECT_MAX_BYTES` are multipart uploads made here rather than by boto3's
``upload_file``: the transfer manager refuses ``BucketKeyEnabled`` in ``ExtraArgs``, so its uploads
would silently fall back to the bucket's default; ``CreateMultipartUpload`` takes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from mlblueprints.aws import requests as req
from mlblueprints.config import AwsTarget

log = logging.getLogger(__name__)

PUT_OBJECT_MAX_BYTES = 100 * 1024 * 1024  # larger files go up in parts (multipart upload)
PART_BYTES = 64 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on the parts of one upload
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (but the last)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return (response or {}).get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def put_file(s3: Any, path: Path, uri: str, aws: AwsTarget, content_type: str) -> None:
    """Upload a local file, SSE-KMS with the use case's key and bucket keys on (multipart above
    :data:`PUT_OBJECT_MAX_BYTES`)."""
    bucket, key = req.split_s3_uri(uri)
    extra = {**req.s3_put_kms(aws), "ContentType": content_type}
    size = Path(path).stat().st_size
    if size <= PUT_OBJECT_MAX_BYTES:
        with Path(path).open("rb") as f:
            s3.put_object(Bucket=bucket, Key=key, Body=f, **extra)
    else:
        put_multipart(s3, Path(path), bucket, key, extra, size)


def put_multipart(s3: Any, path: Path, bucket: str, key: str, extra: dict[str, Any], size: int) -> None:
    """A multipart upload: encryption and bucket keys are set on the create call (what boto3's
    ``upload_file`` cannot do); an upload that fails is aborted, so no parts are left billed."""
    part = max(PART_BYTES, MIN_PART_BYTES, -(-size // MAX_PARTS))
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        parts = []
        with path.open("rb") as f:
            number = 1
            while chunk := f.read(part):
                got = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk)
                parts.append(
                    {
                        "PartNumber": number,
                        "ETag": got["ETag"],
                        **{k: v for k, v in got.items() if k.startswith("Checksum")},
                    }
                )
                number += 1
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except Exception as exc:  # the upload's own error is the one to raise
            log.warning("could not abort the multipart upload of s3://%s/%s: %s", bucket, key, exc)
        raise


def put_bytes(s3: Any, body: bytes, uri: str, aws: AwsTarget, content_type: str, **extra: Any) -> None:
    bucket, key = req.split_s3_uri(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **req.s3_put_kms(aws), **extra)


def exists(s3: Any, uri: str) -> bool:
    bucket, key = req.split_s3_uri(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def download(s3: Any, uri: str, path: Path) -> Path:
    """Download one object to ``path`` (written beside it, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    s3.download_file(*req.split_s3_uri(uri), str(partial))
    os.replace(partial, path)
    return path


def download_prefix(s3: Any, uri: str, directory: Path, suffix: str = ".parquet") -> list[tuple[str, str]]:
    """Download every non-empty object under a prefix as ``<n>{suffix}``; returns (key, local path)."""
    bucket, prefix = req.split_s3_uri(uri)
    files: list[tuple[str, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if o["Size"] == 0:
                continue
            local = Path(directory) / f"{len(files):05d}{suffix}"
            s3.download_file(bucket, o["Key"], str(local))
            files.append((o["Key"], str(local)))
    return files


def delete_keys(s3: Any, bucket: str, keys: list[str], what: str) -> None:
    """Delete staging objects; a failure costs storage only, so it is logged, not raised."""
    try:
        for i in range(0, len(keys), 1000):
            s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            )
    except Exception as exc:
        log.warning("could not delete the staging files under %s: %s", what, exc)


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract a job's ``.tar.gz`` into ``dest`` (replaced whole: write to a sibling, then rename)."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp, filter="data")  # no absolute paths, no '..', no devices
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def upload_dir(s3: Any, aws: AwsTarget, directory: Path, uri: str, since: float) -> None:
    """Upload the files of ``directory`` written since ``since`` (a gate's results and the Data
    Docs pages it rebuilt), encrypted with the use case's key."""
    bucket, prefix = req.split_s3_uri(uri)
    types = {".html": "text/html", ".json": "application/json"}
    for p in Path(directory).rglob("*"):
        if p.is_file() and p.stat().st_mtime >= since:
            key = f"{prefix}/{p.relative_to(directory).as_posix()}"
            ctype = types.get(p.suffix, "application/octet-stream")
            s3.put_object(Bucket=bucket, Key=key, Body=p.read_bytes(), ContentType=ctype, **req.s3_put_kms(aws))
