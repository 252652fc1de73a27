"""Progress: one round of the run's loop, judged from the run's own markers.

Input: the state (``{"run": RunRecord, "progress": <the previous round's output>, ...}``).
Output: ``{"round", "done", "dead", "remaining", "last_tries", "complete", "stalled", "lanes"}``:
``complete`` when every planned task is done or dead-lettered (``RunState.progress``: listings of
``done/`` and ``dead/``, never SQS's approximate, queue-wide counts, so runs sharing the queue
never wait for each other); ``lanes`` are the next round's Map items (at most one per remaining
task). ``stalled`` counts rounds in a row that settled no task; after :data:`MAX_STALLED_ROUNDS`
the run fails with ``RunStalled`` naming how many tasks are left (e.g. their messages were lost,
or a worker fails before it can record anything).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless.aws import RunStalled
from cubeless.models import RunRecord
from cubeless.state import RunState
from lambdas.env import queue
from lambdas.observability import logger, metrics, tracer

#: Rounds in a row without a settled task before the run fails (a round with nothing to take is
#: at least the 10 s wait plus the Map's start: 40 rounds outlast the longest backoff (160 s)
#: plus the queue's visibility timeout (180 s) that a try lost with its Lambda waits for).
MAX_STALLED_ROUNDS = 40


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    record = RunRecord.model_validate(event["run"])
    before = dict(event.get("progress") or {})
    logger.append_keys(run_id=record.run_id)
    state = RunState(record.store, record.run_id)
    now = state.progress(record.task_count, last_try_seconds=queue().visibility_timeout())
    settled = now.done + len(now.dead)
    previous = int(before.get("done", 0)) + int(before.get("dead", 0))
    stalled = 0 if now.complete or settled > previous else int(before.get("stalled", 0)) + 1
    rnd = int(before.get("round", 0)) + 1
    metrics.add_metric(name="RunRounds", unit=MetricUnit.Count, value=1)
    logger.info("run progress", extra={"round": rnd, "done": now.done, "dead": len(now.dead), "remaining": now.remaining})
    if stalled >= MAX_STALLED_ROUNDS:
        raise RunStalled(
            f"run {record.run_id}: {now.remaining} of {record.task_count} tasks neither done nor dead-lettered after "
            f"{stalled} rounds without progress; start the run again (it re-queues them), or see the worker's log"
        )
    lanes = max(1, min(record.lanes, now.remaining)) if not now.complete else 0
    return {
        "round": rnd,
        "done": now.done,
        "dead": len(now.dead),
        "remaining": now.remaining,
        "last_tries": now.last_tries,
        "complete": now.complete,
        "stalled": stalled,
        "lanes": list(range(lanes)),
    }
