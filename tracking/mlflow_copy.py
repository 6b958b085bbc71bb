"""Copy another MLflow tracking store (a LiteLLM Proxy deployment's) into the portal's, through MLflow's client.

Through the client rather than SQL: the source may be a PostgreSQL or SQLite backend store or a running tracking
server, of an older MLflow schema, and the destination applies its own. What is copied, per experiment (by name):
runs with their parameters, tags, full metric histories, status and times (and their artifacts when the source's
artifact store is reachable), and traces (LiteLLM's MLflow callback logs one per request) with their spans, times,
tags and metadata. Each copy carries the source's id in the tag `portal.copied_from`, so running it again copies
only what is new.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

log = logging.getLogger(__name__)

COPIED_FROM = "portal.copied_from"
# MLflow's limits per log_batch call.
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000
# Tags MLflow manages itself on the destination; copying them would contradict it.
OWN_RUN_TAGS = ("mlflow.log-model.history",)


@dataclass
class CopySummary:
    experiments: list[str] = field(default_factory=list)
    runs: int = 0
    traces: int = 0
    skipped: int = 0  # already copied by an earlier run of the command
    artifacts_missing: list[str] = field(default_factory=list)  # source runs whose artifacts could not be read

    def __str__(self) -> str:
        text = (f"{len(self.experiments)} experiments ({', '.join(self.experiments) or 'none'}), {self.runs} runs "
                f"and {self.traces} traces copied; {self.skipped} already there")
        if self.artifacts_missing:
            text += f"; artifacts not readable for {len(self.artifacts_missing)} runs (copied without them)"
        return text


def copy_store(source_uri: str, destination_uri: str, experiment_names: list[str] | None = None) -> CopySummary:
    """Copy every active experiment of source_uri (or only those named) into destination_uri."""
    import mlflow
    from mlflow import MlflowClient

    source, destination = MlflowClient(source_uri), MlflowClient(destination_uri)
    # Traces are written through MLflow's tracer, which exports to the global tracking URI.
    mlflow.set_tracking_uri(destination_uri)
    summary = CopySummary()
    for experiment in _experiments(source):
        if experiment_names and experiment.name not in experiment_names:
            continue
        target_id = _target_experiment(destination, experiment)
        _copy_runs(source, destination, experiment.experiment_id, target_id, summary)
        _copy_traces(source, destination, experiment.experiment_id, target_id, summary)
        summary.experiments.append(experiment.name)
    mlflow.flush_trace_async_logging()
    return summary


def _pages(search: Any, **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def _experiments(source: MlflowClient) -> Iterator[Experiment]:
    return _pages(source.search_experiments, max_results=1000)


def _target_experiment(destination: MlflowClient, experiment: Experiment) -> str:
    existing = destination.get_experiment_by_name(experiment.name)
    if existing is not None:
        return str(existing.experiment_id)
    tags = {key: value for key, value in experiment.tags.items() if not key.startswith("mlflow.")}
    return str(destination.create_experiment(experiment.name, tags=tags or None))


def _copied_ids(items: Iterator[Any]) -> set[str]:
    """The source ids of what an earlier copy already brought over."""
    return {tags[COPIED_FROM] for tags in map(_tags_of, items) if COPIED_FROM in tags}


def _tags_of(item: Any) -> dict[str, str]:
    """A run's tags live on run.data, a trace's on trace.info."""
    data = getattr(item, "data", None)
    tags = getattr(data, "tags", None)
    return dict(tags) if isinstance(tags, dict) else dict(item.info.tags)


def _copy_runs(source: MlflowClient, destination: MlflowClient, source_id: str, target_id: str,
               summary: CopySummary) -> None:
    from mlflow.entities import ViewType

    done = _copied_ids(_pages(destination.search_runs, experiment_ids=[target_id], run_view_type=ViewType.ALL,
                              max_results=1000))
    for run in _pages(source.search_runs, experiment_ids=[source_id], run_view_type=ViewType.ACTIVE_ONLY,
                      max_results=1000):
        if run.info.run_id in done:
            summary.skipped += 1
            continue
        _copy_run(source, destination, run, target_id, summary)
        summary.runs += 1


def _copy_run(source: MlflowClient, destination: MlflowClient, run: Run, target_id: str,
              summary: CopySummary) -> None:
    from mlflow.entities import Param

    tags = {key: value for key, value in run.data.tags.items() if key not in OWN_RUN_TAGS}
    tags[COPIED_FROM] = run.info.run_id
    copy = destination.create_run(target_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name)
    new_id = copy.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, len(params), PARAMS_PER_BATCH):
        destination.log_batch(new_id, params=params[start : start + PARAMS_PER_BATCH])
    # The whole history of each metric (every step and timestamp), not only run.data's latest value.
    history = [point for key in run.data.metrics for point in source.get_metric_history(run.info.run_id, key)]
    for start in range(0, len(history), METRICS_PER_BATCH):
        destination.log_batch(new_id, metrics=history[start : start + METRICS_PER_BATCH])
    _copy_artifacts(source, destination, run.info.run_id, new_id, summary)
    if run.info.status != "RUNNING":
        destination.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)


def _copy_artifacts(source: MlflowClient, destination: MlflowClient, run_id: str, new_id: str,
                    summary: CopySummary) -> None:
    from mlflow.exceptions import MlflowException

    try:
        if not source.list_artifacts(run_id):
            return
        with tempfile.TemporaryDirectory() as folder:
            local = source.download_artifacts(run_id, "", folder)
            destination.log_artifacts(new_id, local)
    except (MlflowException, OSError) as e:
        # An artifact store that is not mounted here (the old volume) must not stop the copy of the records.
        log.warning("artifacts of run %s not copied: %s", run_id, e)
        summary.artifacts_missing.append(run_id)


def _copy_traces(source: MlflowClient, destination: MlflowClient, source_id: str, target_id: str,
                 summary: CopySummary) -> None:
    from mlflow.tracing.utils.copy import copy_trace_to_experiment

    done = _copied_ids(_pages(destination.search_traces, locations=[target_id], include_spans=False,
                              max_results=500))
    for trace in _pages(source.search_traces, locations=[source_id], max_results=500):
        if trace.info.trace_id in done:
            summary.skipped += 1
            continue
        document = trace.to_dict()
        document["info"].setdefault("tags", {})[COPIED_FROM] = trace.info.trace_id
        copy_trace_to_experiment(document, experiment_id=target_id)
        summary.traces += 1
