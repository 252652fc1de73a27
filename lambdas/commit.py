"""Commit: publish the run's time steps once every task is done; release the cube lock.

Input: ``{"run": RunRecord, "spec": CubeSpec, "execution": <its ARN>}``; the state machine comes
here when the progress step found every task done or dead-lettered. The execution must still hold
the cube lock its planner took (taken again, a no-op; ``CubeLocked`` if another execution took it
over meanwhile). Complete: releases the lock and returns a manifest summary. Tasks dead-lettered
(or missing): writes the run's incomplete manifest, leaves the cube alone and raises
``RunIncomplete``, one line naming the dead tasks, where their list is and ``cubeless redrive
RUN``; the execution fails with it. Tasks neither done nor dead (the run was judged too early):
``TasksPending``. Without ``execution`` (a direct invocation) no lock is involved.

``{"action": "release", "run": ..., "execution": ...}``: the state machine's failure paths give
the lock up before failing; it is removed only if it still names this execution.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless.aws import ConfigError, RunIncomplete, TasksPending
from cubeless.commit import commit_run, manifest_uri
from cubeless.models import RunRecord
from cubeless.spec import CubeSpec
from cubeless.state import RunState
from lambdas.env import deployment, queue
from lambdas.observability import logger, metrics, tracer

#: Dead task ids named in the error message (all of them are in the run's manifest).
NAMED = 5


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    record = RunRecord.model_validate(event["run"])
    logger.append_keys(run_id=record.run_id)
    execution = event.get("execution")
    lock = deployment().cube_lock(record.store, execution) if execution else None
    if event.get("action") == "release":
        if lock is None:
            raise ConfigError("the release step needs the execution's ARN (`execution`: $$.Execution.Id)")
        released = lock.release()  # another execution's lock (it took over a stale one) stays
        logger.info("cube lock released" if released else "cube lock not held by this execution", extra={"execution": execution})
        return {"run_id": record.run_id, "released": released}
    if lock is not None:
        lock.acquire(record.run_id)
    state = RunState(record.store, record.run_id)
    progress = state.progress(record.task_count, last_try_seconds=queue().visibility_timeout())
    if not progress.complete:
        raise TasksPending(
            f"run {record.run_id}: {progress.remaining} of {record.task_count} tasks neither done nor dead-lettered yet; "
            "the commit waits for the workers"
        )
    manifest = commit_run(record.store, record.run_id, spec=CubeSpec.model_validate(event["spec"]))
    missing = manifest.tasks_planned - manifest.tasks_done
    if not manifest.complete:
        dead = progress.dead
        named = ", ".join(dead[:NAMED]) + (f" and {len(dead) - NAMED} more" if len(dead) > NAMED else "")
        raise RunIncomplete(
            f"run {record.run_id}: {missing} of {manifest.tasks_planned} tasks missing ({manifest.tasks_failed} failed); "
            f"their list is in {state.manifest_uri} (`missing`, `failures`)"
            + (f"; dead-lettered: {named}" if dead else "")
            + f"; fix the cause, then `cubeless redrive {record.run_id}` retries only them"
        )
    if lock is not None:
        lock.release()
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
