"""Planner: validate the execution input, plan (or resume) the run, enqueue its tasks.

Input: a cube spec, or ``{"spec": ..., "lanes": n, "as_of": time}`` (see ``cubeless.aws.RunRequest``).
Output: ``{"run": RunRecord | None, "spec": ..., "progress": {"round": 0, "lanes": [0, 1, ...], ...}}``
(``progress.lanes``: the first round's Map items, one per lane); the task list stays in the store
and the queue, never in the state. ``run`` is None when the cube is already up to date. A resumed
run's re-queued tasks lose their dead markers (``cubeless redrive``: they get new tries). Bad
input raises ``SpecError`` with one line, which the state machine turns into the execution's cause.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless.aws import parse_request
from cubeless.runner import prepare_run
from cubeless.state import RunState
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
        return {"run": None, "spec": spec, "progress": first_round([])}
    # Dead markers belong to tasks without a done marker, i.e. to the tasks queued again now.
    RunState(prepared.record.store, prepared.record.run_id).clear_dead()
    sent = queue().enqueue(prepared.todo)
    lanes = deployment().lanes_for(request.lanes, sent)
    record = prepared.record.model_copy(update={"lanes": max(1, deployment().lanes_for(request.lanes))})
    metrics.add_metric(name="TasksQueued", unit=MetricUnit.Count, value=sent)
    logger.info("run planned", extra={"run_id": record.run_id, "tasks": record.task_count, "queued": sent, "resumed": prepared.resumed})
    return {"run": record.model_dump(mode="json"), "spec": spec, "progress": first_round(list(range(lanes)), done=prepared.already_done)}


def first_round(lanes: list[int], *, done: int = 0) -> dict[str, Any]:
    """The progress before the first round (the shape ``lambdas.progress`` returns)."""
    return {"round": 0, "done": done, "dead": 0, "stalled": 0, "complete": False, "lanes": lanes}
