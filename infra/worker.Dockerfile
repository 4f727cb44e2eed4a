# The image of the Step Functions worker: the project's own code and its locked dependencies, run
# by the state machines as SageMaker Processing jobs:
#   python -m mlblueprints.stepfunctions.worker <usecase> <pattern> <step> <phase> --execution <name>
# and, with the entry point `python -m awslambdaric` (the lock's worker group), as the statements
# Lambda function (infra/mlblueprints.yaml: mlblueprints.stepfunctions.statements.handler).
# Build: make worker-image (from the repository root); push: docs/stepfunctions.md.
FROM python:3.11-slim-bookworm

ARG UV_VERSION=0.13.8
ARG GIT_COMMIT=unknown
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    MLB_PROJECT_ROOT=/opt/mlblueprints \
    MLB_HOME=/tmp/mlb \
    MLB_GIT_COMMIT=${GIT_COMMIT} \
    PATH=/opt/venv/bin:$PATH

RUN pip install --no-cache-dir "uv==${UV_VERSION}" && useradd --create-home --uid 1000 worker
WORKDIR /opt/mlblueprints

# the locked runtime dependencies (no dev group), in their own layer
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --group worker --no-install-project --python /usr/local/bin/python3.11

# the project: the library, the use cases (YAML, SQL) and the quality suites the gates read
COPY include/ include/
COPY dags/usecases/ dags/usecases/
COPY expectations/ expectations/
RUN uv sync --frozen --no-dev --group worker --python /usr/local/bin/python3.11 \
    && python -c "import awslambdaric, mlblueprints.stepfunctions.worker, mlblueprints.stepfunctions.statements"

USER worker
ENTRYPOINT ["python", "-m", "mlblueprints.stepfunctions.worker"]
