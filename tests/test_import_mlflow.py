"""`manage.py import_mlflow SOURCE --to DEST`, the migration guide's command: a LiteLLM deployment's MLflow records
(runs and the per-request traces of LiteLLM's MLflow callback) copied into the portal's MLflow.

Two real MLflow stores: the source is an SQLite backend store written by MLflow's own client in a separate
process, the destination another SQLite store, or the real tracking server of tests/mlflow_server.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="needs the full mlflow package (dev extra) for SQL stores")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# What the LiteLLM deployment left in its MLflow: one run with a metric history, one request trace.
SEED = """
import sys, mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
uri = sys.argv[1]
mlflow.set_tracking_uri(uri)
client = MlflowClient(uri)
experiment = client.create_experiment("litellm-requests", tags={"team": "ops"})
run = client.create_run(experiment, start_time=1_700_000_000_000, tags={"source": "litellm"}, run_name="daily")
client.log_batch(run.info.run_id, params=[mlflow.entities.Param("model", "gemini-2.5-flash")],
                 metrics=[Metric("requests", value, 1_700_000_000_000 + step * 1000, step) for step, value in
                          enumerate([3.0, 5.0, 8.0])])
client.set_terminated(run.info.run_id, status="FINISHED", end_time=1_700_000_900_000)
mlflow.set_experiment(experiment_id=experiment)
with mlflow.start_span("litellm-acompletion") as span:
    span.set_inputs({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]})
    span.set_outputs({"content": "hello"})
    with mlflow.start_span("provider-call") as child:
        child.set_attribute("provider", "gemini")
mlflow.flush_trace_async_logging()
"""

# What a store holds, in a comparable form.
READ = """
import json, sys
from mlflow import MlflowClient
from mlflow.entities import ViewType
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("litellm-requests")
runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
traces = client.search_traces(locations=[experiment.experiment_id])
print(json.dumps({
    "experiment_tags": {k: v for k, v in experiment.tags.items() if not k.startswith("mlflow.")},
    "runs": [{"name": r.info.run_name, "status": r.info.status, "start": r.info.start_time, "end": r.info.end_time,
              "params": r.data.params, "tags": {k: r.data.tags[k] for k in ("source",)},
              "history": [(m.step, m.value, m.timestamp) for m in client.get_metric_history(r.info.run_id, "requests")]}
             for r in runs],
    "traces": [{"spans": sorted((s.name, json.dumps(s.inputs), json.dumps(s.outputs)) for s in t.data.spans),
                "start": t.info.request_time} for t in traces],
}))
"""


def python(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "PORTAL_DATA_DIR": str(cwd / "portal-data"), "PORTAL_ENV_FILE": os.devnull,
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'unused.db'}"}
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def store(uri: str, cwd: Path) -> dict:
    return json.loads(python("-c", READ, uri, cwd=cwd))


def import_mlflow(source: str, destination: str, cwd: Path) -> str:
    return python(str(ROOT / "manage.py"), "import_mlflow", source, "--to", destination, cwd=cwd)


@pytest.fixture
def seed_store(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'litellm-mlflow.db'}"
    python("-c", SEED, uri, cwd=tmp_path)
    return uri


def test_it_copies_runs_with_their_history_and_traces_with_their_spans_once(seed_store, tmp_path):
    destination = f"sqlite:///{tmp_path / 'portal-mlflow.db'}"
    output = import_mlflow(seed_store, destination, tmp_path)
    assert "1 runs and 1 traces copied; 0 already there" in output
    original, copy = store(seed_store, tmp_path), store(destination, tmp_path)
    assert copy == original
    assert copy["runs"][0]["history"] == [[0, 3.0, 1_700_000_000_000], [1, 5.0, 1_700_000_001_000],
                                          [2, 8.0, 1_700_000_002_000]]
    assert {span[0] for span in copy["traces"][0]["spans"]} == {"litellm-acompletion", "provider-call"}

    # Run again (the guide says it is safe): nothing is copied twice.
    again = import_mlflow(seed_store, destination, tmp_path)
    assert "0 runs and 0 traces copied; 2 already there" in again
    assert store(destination, tmp_path) == original


def test_it_copies_into_a_running_tracking_server(seed_store, tmp_path, mlflow_server):
    """The Docker deployment's destination is the portal's MLflow server (http://mlflow:5001)."""
    import_mlflow(seed_store, mlflow_server.url, tmp_path)
    assert store(mlflow_server.url, tmp_path) == store(seed_store, tmp_path)


def test_it_refuses_to_copy_a_store_into_itself(tmp_path):
    env = {**os.environ, "PORTAL_DATA_DIR": str(tmp_path / "portal-data"), "PORTAL_ENV_FILE": os.devnull}
    same = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "import_mlflow", same, "--to", same],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "the source and the destination are the same store" in done.stderr
