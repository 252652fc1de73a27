"""Commit: publish the run's time steps once every task is done.

Input: the planner's output (``{"run": RunRecord, "spec": CubeSpec, ...}``). Complete: returns a manifest summary.
Tasks still queued or in flight: raises ``TasksPending`` (the state machine retries with backoff).
Queue drained but tasks missing: raises ``RunIncomplete`` whose one-line message says how many
and where their list is; the execution fails with it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless.aws import RunIncomplete, TasksPending
from cubeless.commit import commit_run, manifest_uri
from cubeless.models import RunRecord
from cubeless.spec import CubeSpec
from cubeless.state import RunState
from lambdas.env import deployment, queue
from lambdas.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    record = RunRecord.model_validate(event["run"])
    logger.append_keys(run_id=record.run_id)
    manifest = commit_run(record.store, record.run_id, spec=CubeSpec.model_validate(event["spec"]))
    missing = manifest.tasks_planned - manifest.tasks_done
    if not manifest.complete:
        where = RunState(record.store, record.run_id).manifest_uri
        if (left := queue().depth().total) > 0:
            raise TasksPending(f"run {record.run_id}: {missing} of {manifest.tasks_planned} tasks not done yet, {left} messages queued or in flight")
        raise RunIncomplete(
            f"run {record.run_id}: {missing} of {manifest.tasks_planned} tasks missing ({manifest.tasks_failed} failed); "
            f"their list is in {where} (`missing`, `failures`); fix the cause, then `cubeless redrive {record.run_id}` retries only them"
        )
    metrics.add_metric(name="BinsCommitted", unit=MetricUnit.Count, value=len(manifest.run_bins))
    logger.info("run committed", extra={"bins": [b.label for b in manifest.run_bins], "tasks": manifest.tasks_done})
    return {
        "run_id": manifest.run_id,
        "complete": True,
        "bins": [b.label for b in manifest.run_bins],
        "committed_bins": len(manifest.committed_bins),
        "tasks_done": manifest.tasks_done,
        "manifest": manifest_uri(record.store),
    }
