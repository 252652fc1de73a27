"""Planner: validate the execution input, take the cube lock, plan (or resume) the run, enqueue its tasks.

Input: ``{"input": <execution input>, "execution": <its ARN>}`` from the state machine (the
execution input is a cube spec, or ``{"spec": ..., "lanes": n, "as_of": time}``, see
``cubeless.aws.RunRequest``); the bare execution input of a direct invocation plans without the lock.
Output: ``{"run": RunRecord | None, "spec": ..., "progress": {"round": 0, "lanes": [0, 1, ...], ...}}``
(``progress.lanes``: the first round's Map items, one per lane); the task list stays in the store
and the queue, never in the state. ``run`` is None when the cube is already up to date. A resumed
run's re-queued tasks lose their dead markers (``cubeless redrive``: they get new tries).

The cube lock (``cubeless.state.CubeLock`` for this execution) is taken before anything is written
or queued, and stays with the execution until its commit or its failure path releases it; a retry
of this step in the same execution takes it again. Another execution's live lock raises
``CubeLocked`` naming it; bad input raises ``SpecError``: one line each, which the state machine
turns into the execution's cause. Failing after it took the lock, the planner gives it up.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless.aws import RunRequest, parse_request, planner_input
from cubeless.prepare import prepare_run
from cubeless.state import CubeLock, RunState
from lambdas.env import deployment, queue
from lambdas.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    execution_input, execution = planner_input(event)
    logger.append_keys(execution=execution)
    request = parse_request(execution_input)
    deployment().admit(request.spec)
    lock = deployment().cube_lock(request.spec.store, execution) if execution else None
    try:
        return plan(request, lock)
    except BaseException:
        if lock is not None and lock.held:  # this invocation took it: the run it locked for is not starting
            lock.release()
        raise


def plan(request: RunRequest, lock: CubeLock | None) -> dict[str, Any]:
    prepared = prepare_run(request.spec, lanes=deployment().lanes_for(request.lanes), lock=lock)
    spec = request.spec.model_dump(mode="json")
    if prepared.record is None:
        if lock is not None and lock.held:  # taken, then another run committed the bins meanwhile
            lock.release()
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
