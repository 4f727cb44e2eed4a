"""Names shared by the renderer, the worker, the deploy commands and the templates: definition
substitutions, the S3 layout of an execution, the names of the resources the templates create.

Pure: no boto3, no Airflow.
"""

from __future__ import annotations

import re

from mlblueprints.config import AwsTarget, UseCase

# the ${...} definition substitutions of every state machine, and the aws field each stands for
AWS_FIELDS = {
    "Bucket": "bucket",
    "KmsKeyArn": "kms_key_arn",
    "GlueDatabase": "glue_database",
    "AthenaWorkgroup": "athena_workgroup",
    "SageMakerRoleArn": "iam_role_arn",
}
# substitutions that are not in the use case's aws section: resources the templates create
WORKER_IMAGE, WORKER_ROLE = "WorkerImageUri", "WorkerRoleArn"
STATEMENTS_FUNCTION = "StatementsFunctionArn"  # the Lambda function of a step's Athena statements
TRANSFORM_ROLE = "TransformRoleArn"  # the role of the scoring model and its transform jobs
EXTRA = (WORKER_IMAGE, WORKER_ROLE, STATEMENTS_FUNCTION, TRANSFORM_ROLE)

WORKER_REPOSITORY = "mlblueprints-worker"
RUN_DOCUMENT = "run.json"  # under the run prefix: the execution, its input, when it started
STATE_NAME_MAX = 80  # ASL: state names are at most 80 characters
EXECUTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def placeholder(name: str) -> str:
    return "${" + name + "}"


def aws_section(uc: UseCase) -> AwsTarget:
    if uc.aws is None:
        raise ValueError(f"{uc.name}: state machines need the aws section (bucket, key, roles, ...)")
    return uc.aws


def on_aws(uc: UseCase) -> UseCase:
    """The use case as a state machine runs it: its backends those of the aws target (the state
    machines are the aws orchestration; a YAML that runs locally under Airflow still names the
    aws resources its state machines use)."""
    aws_section(uc)
    return uc.model_copy(update={"target": "aws"})


def with_placeholders(uc: UseCase) -> UseCase:
    """:func:`on_aws` with the aws fields that are substitutions replaced by ``${Name}`` (what the
    pure builders then put into the definition)."""
    aws = aws_section(uc)
    update: dict[str, object] = {"aws": aws.model_copy(update={f: placeholder(n) for n, f in AWS_FIELDS.items()})}
    if uc.scoring is not None:
        sm = uc.scoring.sagemaker.model_copy(update={"role_arn": placeholder(TRANSFORM_ROLE)})
        update["scoring"] = uc.scoring.model_copy(update={"sagemaker": sm})
    return on_aws(uc).model_copy(update=update)


def transform_role_arn(uc: UseCase) -> str:
    """The role the scoring model and its transform jobs run with (as the Airflow task's request
    names it): ``scoring.sagemaker.role_arn``, else the aws section's ``iam_role_arn``."""
    aws = aws_section(uc)
    return (uc.scoring.sagemaker.role_arn if uc.scoring is not None else None) or aws.iam_role_arn


def resource_prefix(uc: UseCase) -> str:
    """``mlb-<use case>``: the prefix of the IAM roles, state machines and queues the templates
    create for a use case (IAM role names: at most 64 characters)."""
    return "mlb-" + re.sub(r"[^a-zA-Z0-9-]+", "-", uc.name).strip("-")[:40]


def state_machine_name(uc: UseCase, pattern: str) -> str:
    return f"{resource_prefix(uc)}-{pattern}"


def worker_role_name(uc: UseCase) -> str:
    return f"{resource_prefix(uc)}-sfn-worker"


def statements_function_name(uc: UseCase) -> str:
    return f"{resource_prefix(uc)}-statements"


def worker_image_uri(uc: UseCase, tag: str) -> str:
    aws = aws_section(uc)
    return f"{aws.account_id}.dkr.ecr.{aws.region}.amazonaws.com/{WORKER_REPOSITORY}:{tag}"


def substitutions(uc: UseCase, image_tag: str = "latest") -> dict[str, str]:
    """The values of the definition substitutions for ``uc``: the aws section's own, the worker
    role and the statements function the templates create, the transform role, and the worker
    image (``image_tag``, pushed by ``make worker-image``)."""
    aws = aws_section(uc)
    out = {n: str(getattr(aws, f)) for n, f in AWS_FIELDS.items()}
    out[WORKER_ROLE] = f"arn:aws:iam::{aws.account_id}:role/{worker_role_name(uc)}"
    out[STATEMENTS_FUNCTION] = f"arn:aws:lambda:{aws.region}:{aws.account_id}:function:{statements_function_name(uc)}"
    out[WORKER_IMAGE] = worker_image_uri(uc, image_tag)
    out[TRANSFORM_ROLE] = transform_role_arn(uc)
    return out


def substitute(definition: str, values: dict[str, str]) -> str:
    """Replace every ``${Name}`` of a definition (what CloudFormation's DefinitionSubstitutions and
    ``statemachines deploy`` do); an unknown name is an error."""

    def one(m: re.Match[str]) -> str:
        if m[1] not in values:
            raise KeyError(f"no value for the definition substitution ${{{m[1]}}}")
        return values[m[1]].replace("\\", "\\\\").replace('"', '\\"')

    return re.sub(r"\$\{([A-Za-z0-9_]+)\}", one, definition)


def run_prefix(aws: AwsTarget, pattern: str, execution: str) -> str:
    """``s3://<bucket>/<prefix>/stepfunctions/<pattern>/<execution>``: everything one execution's
    worker phases read and write (the run document, each step's outcome, call, output, result).
    The state machine builds the same keys with ``States.Format`` over ``$$.Execution.Name``, so
    an execution name must be a plain one (:data:`EXECUTION_NAME_RE`; the worker refuses others)."""
    if not EXECUTION_NAME_RE.match(execution):
        raise ValueError(f"execution name {execution!r}: use letters, digits, '-' and '_' (at most 80)")
    return aws.s3_uri("stepfunctions", pattern, execution)


def step_key(step: str, what: str) -> str:
    """Key of a step's document under the run prefix: ``steps/<step>/<what>.json``."""
    return f"steps/{step}/{what}.json"
