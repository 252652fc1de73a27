"""Worker: one invocation takes tasks from the queue, one after another, until its time is used.

Input: ``{"run_id", "lane", "calls"}`` (a lane of the state machine; ``calls`` counts this lane's
invocations so far). It receives a task, executes it, deletes its message, and goes on until the
queue shows nothing visible (``drained``) or too little time is left for another task: less than
:data:`RESERVE_SECONDS` (of the 90 s timeout, from the Lambda context) or 1.5 x the longest task
of this invocation. Output: the input with ``calls`` + 1, ``more`` (the lane should invoke again:
not drained and fewer than :data:`MAX_CALLS_PER_LANE` calls) and what it did (``done``,
``skipped``: task ids; ``failed``: ``{"task_id", "error"}``).

A failed task never raises: its try is recorded (``RunState.mark_failed``) and its message comes
back after a backoff (10, 20, 40, 80, 160 s; ``CUBELESS_RETRY_DELAY`` sets the first), so one
bad task (or a streak of them) never fails the lane; the task's fate is its own receive count.
After :data:`~cubeless.cost.FAILURE_STREAK` failed tries in a row the call pauses before its next
task (5 s, doubling per further failure, at most 30 s; ``paused`` in the output, metric
``WorkerPausedSeconds``; a done task ends the streak): in a burst of S3 503s, where every try
fails within a second, 900 lanes would otherwise back off ~180,000 messages at once (above SQS's
120,000 in flight) and spend the tries of healthy tasks (simulated: ``make bench`` 7b).
Before its last try (receive count = the queue's ``maxReceiveCount``, 6) the worker writes the
run's ``dead/<task_id>`` marker (``final`` False): if that try dies with the Lambda, the marker
still settles the task once the visibility timeout is over, and SQS dead-letters the message on
its next receive. A failed last try rewrites the marker as final and moves the message to the
dead-letter queue at once (``CUBELESS_DLQ_URL``; without it, or if that fails, the message is
made visible at once and SQS parks it on its next receive); a successful one deletes it
(``mark_done``).
A failed try also drops GDAL's network caches (:func:`forget_network_cache`): a warm container must
not serve the next try the bytes that made this one fail.
"""

from __future__ import annotations

import ctypes
import functools
import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cubeless import fs
from cubeless.aws import Received
from cubeless.cost import MAX_CALLS_PER_LANE as _MAX_CALLS
from cubeless.cost import WORKER_RESERVE_SECONDS, streak_pause
from cubeless.execute import execute_task
from cubeless.models import TaskResult
from cubeless.state import RunState
from lambdas.env import dead_letter_queue, deployment, queue
from lambdas.observability import logger, metrics, tracer

#: Stop taking tasks when less than this is left of the invocation's time (s); the cost model
#: and the simulation use the same figures (cubeless.cost).
RESERVE_SECONDS = WORKER_RESERVE_SECONDS
#: Invocations per lane (child execution) before it returns to the parent: ~8 history events
#: each, so a lane's history stays near 100 events, far below Standard's 25,000.
MAX_CALLS_PER_LANE = _MAX_CALLS
SKIPPED = "skipped"
sleep = time.sleep  #: how a call pauses after a streak of failures


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    event = dict(event or {})
    calls = int(event.get("calls", 0)) + 1
    done: list[str] = []
    skipped: list[str] = []
    failed: list[dict[str, str]] = []
    longest = 0.0
    drained = False
    streak = paused = 0  # failed tries in a row; the streak last paused for
    waited = 0.0
    while (left := context.get_remaining_time_in_millis() / 1000 - max(RESERVE_SECONDS, 1.5 * longest)) > 0:
        pause = streak_pause(streak) if streak != paused else 0.0
        if pause:  # a streak of failures (S3 503s, a bad image): wait before spending another task's try
            paused = streak
            if pause >= left:
                break
            sleep(pause)
            waited += pause
            continue
        got = queue().receive()
        if got is None:
            drained = True
            break
        t0 = time.perf_counter()
        error = work_on(got)
        longest = max(longest, time.perf_counter() - t0)
        if error is None:
            done.append(got.task.task_id)
        elif error == SKIPPED:
            skipped.append(got.task.task_id)
        else:
            failed.append({"task_id": got.task.task_id, "error": error[:300]})
        if error in (None, SKIPPED):
            streak = paused = 0
        else:
            streak += 1
    metrics.add_metric(name="WorkerCalls", unit=MetricUnit.Count, value=1)
    if waited:
        metrics.add_metric(name="WorkerPausedSeconds", unit=MetricUnit.Seconds, value=waited)
    return {
        **{k: v for k, v in event.items() if k in ("run_id", "lane")},
        "calls": calls,
        "drained": drained,
        "more": not drained and calls < MAX_CALLS_PER_LANE,
        "done": done,
        "skipped": skipped,
        "failed": failed,
        "paused": round(waited, 1),
    }


def work_on(got: Received) -> str | None:
    """Execute one received task: None when done, :data:`SKIPPED` when it was done already, else
    the error of the failed try (recorded; the message backs off or is dead-lettered)."""
    logger.append_keys(run_id=got.task.run_id, task_id=got.task.task_id, attempt=got.receive_count)
    try:
        state = RunState(got.task.spec.store, got.task.run_id)
        if fs.exists(state.done_uri(got.task.task_id)):
            # A duplicate (a resumed run re-queues what it cannot prove done): one HEAD instead of the work.
            queue().delete(got)
            metrics.add_metric(name="TasksSkippedDone", unit=MetricUnit.Count, value=1)
            return SKIPPED
        last = queue().max_receives()
        if last is not None and got.receive_count >= last:
            state.mark_dead(got.task.task_id, receive_count=got.receive_count, final=False)
    except Exception as exc:  # the store or the queue failed us: this try counts as failed
        return record_failure(got, exc, 0.0)
    t0 = time.perf_counter()
    try:
        result = execute_task(got.task, policy=deployment().href_policy())
    except Exception as exc:
        return record_failure(got, exc, time.perf_counter() - t0)
    try:
        queue().delete(got)
    except Exception:  # done and marked: a leftover message is skipped as a duplicate
        logger.exception("could not delete the message of a done task")
    metrics.add_metric(name="TasksDone", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="TaskSeconds", unit=MetricUnit.Seconds, value=result.seconds)
    logger.info("task done", extra={"result": result.model_dump(mode="json")})
    return None


def record_failure(got: Received, exc: Exception, seconds: float) -> str:
    """Mark the try failed in the run's state and bring the message back after a backoff (or,
    after the last try, dead-letter it); return the error."""
    logger.exception("task failed")
    forget_network_cache()
    metrics.add_metric(name="TasksFailed", unit=MetricUnit.Count, value=1)
    error = f"{type(exc).__name__}: {exc}"[:2000]
    result = TaskResult(task_id=got.task.task_id, status="failed", attempts=got.receive_count, error=error, seconds=round(seconds, 3))
    try:
        state = RunState(got.task.spec.store, got.task.run_id)
        state.mark_failed(result)
        last = queue().max_receives()
        final = last is not None and got.receive_count >= last
        if final:
            state.mark_dead(got.task.task_id, receive_count=got.receive_count, final=True, error=error)
            dlq = dead_letter_queue()
            if dlq is not None:
                try:
                    queue().dead_letter(got, dlq)
                    metrics.add_metric(name="TasksDeadLettered", unit=MetricUnit.Count, value=1)
                    return error
                except Exception:
                    logger.exception("could not dead-letter the message; SQS parks it on its next receive")
        queue().retry_later(got, 0 if final else deployment().retry_delay_for(got.receive_count))
    except Exception:  # the message comes back after the queue's visibility timeout anyway
        logger.exception("could not record the failure")
    return error


def forget_network_cache() -> None:
    """Drop GDAL's process-wide ``/vsicurl/`` and ``/vsis3/`` caches (file sizes, headers, ranges).

    A warm Lambda container keeps them between invocations, so after a failed try the next tries
    here would be served the cached bytes (or 404) that made it fail, even once the object is
    fixed. (The local runner gets the same effect by replacing a worker process after a failure.)
    """
    lib = _libgdal()
    if lib is not None:
        lib.VSICurlClearCache()


@functools.cache
def _libgdal() -> Any:
    """The libgdal rasterio loaded, through ctypes (None where it cannot be found)."""
    import rasterio  # noqa: F401  (maps libgdal into the process)

    try:
        with open("/proc/self/maps") as f:
            path = next((line.split()[-1] for line in f if "libgdal" in line), None)
        if path is None:
            return None
        lib = ctypes.CDLL(path)
        lib.VSICurlClearCache.argtypes = []
        lib.VSICurlClearCache.restype = None
        return lib
    except (OSError, AttributeError):  # pragma: no cover - not Linux, or a GDAL without the symbol
        logger.warning("GDAL's network cache cannot be cleared here")
        return None
