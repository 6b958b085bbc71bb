#!/bin/sh
# Start MLflow's tracking server on PostgreSQL (the password URL-encoded), sized for a 2 GB limit.
#
# Measured: with its defaults MLflow 3 starts job-runner processes and one worker per CPU, ~4 GB in all.
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false and MLFLOW_WORKERS=1 keep it at ~500 MB (2 workers: ~790 MB).
# LITELLM_LOCAL_MODEL_COST_MAP=True: MLflow imports LiteLLM, whose cost map download would block the
# first trace for ~30 s where there is no internet.
set -eu
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export LITELLM_LOCAL_MODEL_COST_MAP="${LITELLM_LOCAL_MODEL_COST_MAP:-True}"
# Host names the server answers to (DNS-rebinding protection): the portal calls http://mlflow:5001,
# a browser on the host http://localhost:5001.
export MLFLOW_SERVER_ALLOWED_HOSTS="${MLFLOW_SERVER_ALLOWED_HOSTS:-mlflow,mlflow:5001,localhost,localhost:5001,127.0.0.1,127.0.0.1:5001}"

if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
    MLFLOW_BACKEND_STORE_URI="$(python -c 'import os, urllib.parse as u
e = os.environ
print("postgresql+psycopg://%s:%s@%s:%s/%s" % (u.quote(e.get("POSTGRES_USER", "portal"), safe=""),
      u.quote(e["POSTGRES_PASSWORD"], safe=""), e.get("POSTGRES_HOST", "db"), e.get("POSTGRES_PORT", "5432"),
      u.quote(e.get("MLFLOW_DB", "mlflow"), safe="")))')"
fi

exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlflow/artifacts}" \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port 5001 \
    --workers "${MLFLOW_WORKERS:-1}"
