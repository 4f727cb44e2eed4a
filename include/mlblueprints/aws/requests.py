"""Request builders for the services the lakehouse uses on the aws target: S3, Glue, Athena."""

from __future__ import annotations

import hashlib
from typing import Any

from mlblueprints.config import AwsTarget


def client_request_token(*parts: object) -> str:
    """An idempotency token unique per (run, task, try, statement): 64 hex characters.

    Athena accepts 32-128 characters; the same token within its validity returns the same
    query instead of running it twice, and a new try gets a new token (rule 3 of the house).
    """
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def athena_result_configuration(aws: AwsTarget) -> dict[str, Any]:
    """Where Athena writes results, encrypted with the use case's KMS key, in a bucket the use
    case's account must own. (Athena applies ``ExpectedBucketOwner`` to the results location
    only, not to an UNLOAD's target: the worker's own S3 calls that read those files carry it.)"""
    return {
        "OutputLocation": aws.results_uri,
        "EncryptionConfiguration": {"EncryptionOption": "SSE_KMS", "KmsKey": aws.kms_key_arn},
        "ExpectedBucketOwner": aws.account_id,
    }


def athena_start_query(aws: AwsTarget, sql: str, token: str) -> dict[str, Any]:
    """Parameters of StartQueryExecution for one statement of a lakehouse step."""
    return {
        "QueryString": sql,
        "ClientRequestToken": token,
        "QueryExecutionContext": {"Database": aws.glue_database, "Catalog": "AwsDataCatalog"},
        "WorkGroup": aws.athena_workgroup,
        "ResultConfiguration": athena_result_configuration(aws),
    }


def s3_put_kms(aws: AwsTarget) -> dict[str, Any]:
    """Extra arguments of every PutObject / upload we make: SSE-KMS with the use case's key."""
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": aws.kms_key_arn, "BucketKeyEnabled": True}


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def glue_database_input(aws: AwsTarget, description: str) -> dict[str, Any]:
    return {
        "Name": aws.glue_database,
        "Description": description[:2048],
        "LocationUri": aws.s3_uri("warehouse") + "/",
        "Parameters": {"managed-by": "mlblueprints"},
    }


_ICEBERG_TYPES = {
    "string": "string",
    "boolean": "boolean",
    "int": "int",
    "bigint": "long",
    "double": "double",
    "date": "date",
    "timestamp": "timestamp",
}


def iceberg_type(t: str) -> str:
    """Iceberg type name of a column type (config types, plus the meta columns' own)."""
    return _ICEBERG_TYPES.get(t) or t.replace(" ", "")


def glue_iceberg_table_input(
    aws: AwsTarget,
    name: str,
    columns: list[tuple[str, str]],
    partition_by: str | None,
    target_file_size: int,
    description: str = "",
) -> dict[str, Any]:
    """CreateTable parameters for an Iceberg table created by Glue (schema and partition spec).

    ``columns`` are (name, config type) pairs. The table is format v2, Parquet + zstd, with the
    target file size Athena uses for its writes.
    """
    fields = [
        {"Id": i, "Name": n, "Type": iceberg_type(t), "Required": False} for i, (n, t) in enumerate(columns, start=1)
    ]
    spec: dict[str, Any] = {"SpecId": 0, "Fields": []}
    if partition_by:
        source = next(f["Id"] for f in fields if f["Name"] == partition_by)
        spec["Fields"] = [{"SourceId": source, "Transform": "identity", "Name": partition_by, "FieldId": 1000}]
    location = aws.s3_uri("warehouse", name)
    return {
        "DatabaseName": aws.glue_database,
        "TableInput": {
            "Name": name,
            "Description": description[:2048],
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"managed-by": "mlblueprints"},
        },
        "OpenTableFormatInput": {
            "IcebergInput": {
                "MetadataOperation": "CREATE",
                "Version": "2",
                "CreateIcebergTableInput": {
                    "Location": location,
                    "Schema": {"SchemaId": 0, "Type": "struct", "Fields": fields},
                    "PartitionSpec": spec,
                    "Properties": {
                        "write.format.default": "parquet",
                        "write.parquet.compression-codec": "zstd",
                        "write.target-file-size-bytes": str(target_file_size),
                        "write_target_data_file_size_bytes": str(target_file_size),
                    },
                },
            }
        },
    }


def glue_landing_table_input(
    aws: AwsTarget, name: str, landing_prefix: str, fmt: str, columns: list[str], csv_delimiter: str = ","
) -> dict[str, Any]:
    """CreateTable parameters for the external table Athena reads landed files through.

    Partitioned by ``landing_date`` with partition projection (no crawler, no MSCK): the
    partition of a date is the folder ``<landing_prefix>/<YYYY-MM-DD>/``. CSV is read with
    OpenCSVSerde (every column text, header skipped); JSON Lines as one raw text column, parsed
    in SQL so that malformed lines are kept and quarantined instead of dropped.
    """
    location = landing_prefix.rstrip("/") + "/"
    if fmt == "csv":
        cols = [{"Name": c, "Type": "string"} for c in columns]
        serde = {
            "SerializationLibrary": "org.apache.hadoop.hive.serde2.OpenCSVSerde",
            "Parameters": {"separatorChar": csv_delimiter, "quoteChar": '"', "escapeChar": "\\"},
        }
        extra = {"skip.header.line.count": "1"}
    else:
        cols = [{"Name": "line", "Type": "string"}]
        serde = {
            "SerializationLibrary": "org.apache.hadoop.hive.serde2.lazy.LazySimpleSerDe",
            "Parameters": {"field.delim": "\u0001", "serialization.format": "\u0001"},
        }
        extra = {}
    return {
        "DatabaseName": aws.glue_database,
        "TableInput": {
            "Name": name,
            "Description": f"landed {fmt} files, read by the Bronze ingest",
            "TableType": "EXTERNAL_TABLE",
            "PartitionKeys": [{"Name": "landing_date", "Type": "string"}],
            "StorageDescriptor": {
                "Columns": cols,
                "Location": location,
                "InputFormat": "org.apache.hadoop.mapred.TextInputFormat",
                "OutputFormat": "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                "SerdeInfo": serde,
            },
            "Parameters": {
                "classification": fmt,
                "projection.enabled": "true",
                "projection.landing_date.type": "date",
                "projection.landing_date.format": "yyyy-MM-dd",
                "projection.landing_date.range": "2000-01-01,NOW",
                "projection.landing_date.interval": "1",
                "projection.landing_date.interval.unit": "DAYS",
                "storage.location.template": location + "${landing_date}/",
                "managed-by": "mlblueprints",
                **extra,
            },
        },
    }
