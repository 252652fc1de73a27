"""Planner: validate the execution input, plan (or resume) the run, enqueue its tasks.

Input: a cube spec, or ``{"spec": ..., "lanes": n, "as_of": time}`` (see ``cubeless.aws.RunRequest``).
Output: ``{"run": RunRecord | None, "lanes": [0, 1, ...], "spec": ...}``; the task list stays in
the store and the queue, never in the state. ``run`` is None when the cube is already up to date. Bad input
raises ``SpecError`` with one line, which the state machine turns into the execution's cause.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless.aws import parse_request
from cubeless.runner import prepare_run
from lambdas.env import deployment, queue
from lambdas.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    request = parse_request(event)
    deployment().admit(request.spec)
    prepared = prepare_run(request.spec, lanes=deployment().lanes_for(request.lanes))
    spec = request.spec.model_dump(mode="json")
    if prepared.record is None:
        logger.info("cube is up to date", extra={"cube": request.spec.name})
        return {"run": None, "lanes": [], "spec": spec}
    sent = queue().enqueue(prepared.todo)
    lanes = deployment().lanes_for(request.lanes, sent)
    record = prepared.record.model_copy(update={"lanes": lanes})
    metrics.add_metric(name="TasksQueued", unit=MetricUnit.Count, value=sent)
    logger.info("run planned", extra={"run_id": record.run_id, "tasks": record.task_count, "queued": sent, "resumed": prepared.resumed})
    return {"run": record.model_dump(mode="json"), "lanes": list(range(lanes)), "spec": spec}
