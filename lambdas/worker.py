"""Worker: one invocation takes one task from the queue, executes it, deletes its message.

Returns ``{"drained": bool, "idle": bool}``. ``drained``: the queue is empty, the lane ends.
``idle``: nothing visible but tasks are in flight elsewhere (they may fail and come back), the lane
waits and asks again. A failed task is recorded (``RunState.mark_failed``), its message comes back
after a backoff (10, 20, 40, 80, 160 s; ``CUBELESS_RETRY_DELAY`` sets the first), and the handler
raises: the lane's Retry and SQS's redelivery apply, and after 6 receives SQS parks the task in the
dead-letter queue. The last try's message comes back at once, so that SQS parks it on the next
receive instead of after one more backoff (which would keep the lanes and the commit waiting).
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
from cubeless.execute import execute_task
from cubeless.models import TaskResult
from cubeless.state import RunState
from lambdas.env import deployment, queue
from lambdas.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: Any) -> dict[str, Any]:
    got = queue().receive()
    if got is None:
        left = queue().depth().total
        return {"drained": left == 0, "idle": left > 0}
    logger.append_keys(run_id=got.task.run_id, task_id=got.task.task_id, attempt=got.receive_count)
    state = RunState(got.task.spec.store, got.task.run_id)
    if fs.exists(state.done_uri(got.task.task_id)):
        # A duplicate (a resumed run re-queues what it cannot prove done): one HEAD instead of the work.
        queue().delete(got)
        metrics.add_metric(name="TasksSkippedDone", unit=MetricUnit.Count, value=1)
        return {"drained": False, "idle": False, "task_id": got.task.task_id, "skipped": True}
    t0 = time.perf_counter()
    try:
        result = execute_task(got.task, policy=deployment().href_policy())
    except Exception as exc:
        record_failure(got, exc, time.perf_counter() - t0)
        raise
    queue().delete(got)
    metrics.add_metric(name="TasksDone", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="TaskSeconds", unit=MetricUnit.Seconds, value=result.seconds)
    logger.info("task done", extra={"result": result.model_dump(mode="json")})
    return {"drained": False, "idle": False, "task_id": result.task_id}


def record_failure(got: Received, exc: Exception, seconds: float) -> None:
    """Mark the try failed in the run's state and bring the message back after a backoff."""
    logger.exception("task failed")
    forget_network_cache()
    metrics.add_metric(name="TasksFailed", unit=MetricUnit.Count, value=1)
    error = f"{type(exc).__name__}: {exc}"[:2000]
    result = TaskResult(task_id=got.task.task_id, status="failed", attempts=got.receive_count, error=error, seconds=round(seconds, 3))
    try:
        RunState(got.task.spec.store, got.task.run_id).mark_failed(result)
        last = queue().max_receives()
        queue().retry_later(got, 0 if last is not None and got.receive_count >= last else deployment().retry_delay_for(got.receive_count))
    except Exception:  # the task's own error is the one to raise
        logger.exception("could not record the failure")


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
