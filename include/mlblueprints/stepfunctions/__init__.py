"""The pattern declarations rendered to AWS Step Functions (Amazon States Language), and the worker
that runs the project's Python steps inside a state machine.

* :mod:`.asl` renders a :class:`~mlblueprints.patterns.PatternSpec` to an ASL definition: the
  declaration's steps in dependency levels, each step as a branch of a Parallel state. No Airflow
  import; the same declaration the Airflow builder renders.
* :mod:`.integrations` holds, per service kind (``mlblueprints.core.service``), the Task states of
  the service job - Athena ``startQueryExecution.sync`` one statement at a time, SageMaker
  ``createTrainingJob.sync`` - with Parameters built by the same pure builders the Airflow
  operators use, and the SageMaker Processing job that runs a Python phase in the worker image.
  A new kind is one entry there; the renderer does not change.
* :mod:`.statements` is the Lambda function (the worker image) that says, between two queries,
  which statement of a step runs next - a chunked one expanded from its plan query's rows - and
  whether one Athena failed runs again: the decisions of the Airflow operator, by the same
  functions of ``core.service``.
* :mod:`.worker` is the container entry point ``python -m mlblueprints.stepfunctions.worker``: one
  phase (``run``, ``prepare`` or ``finish``) of one step, its inputs and outputs as JSON under the
  execution's S3 prefix.
* :mod:`.deploy` creates or updates the state machines and starts executions (boto3).

Resource names, role ARNs, the bucket and the KMS key are ``${...}`` definition substitutions
(:func:`.asl.substitutions`): their values come from the use case's ``aws`` section, the same
values the worker reads from its copy of the YAML, which it checks at start.
"""
