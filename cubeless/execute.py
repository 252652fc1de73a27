"""Execute one task: compose its tile x bin, write its chunks, record it as done.

This is the whole worker path, shared by the local runner's processes and the Lambda worker.
"""

from __future__ import annotations

import resource
import time
import warnings

from rasterio.errors import NotGeoreferencedWarning

from .compose import compose
from .hrefs import HrefPolicy
from .models import Task, TaskResult
from .state import RunState
from .store import write_task


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def execute_task(task: Task, *, policy: HrefPolicy | None = None) -> TaskResult:
    """Compose, write whole chunks, then mark the task done (the marker is written last)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # GDAL warns on warps of tiny edge windows; the result is correct and the noise is not useful.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        comp = compose(task, policy=policy)
    chunks = write_task(task, comp.bands, comp.count, scale_offset=comp.scale_offset)
    result = TaskResult(
        task_id=task.task_id,
        status="done",
        seconds=round(time.perf_counter() - t0, 3),
        items=comp.items,
        observations=comp.observations,
        valid_fraction=round(comp.valid_fraction, 4),
        bytes_read=comp.bytes_read,
        peak_rss_mb=round(peak_rss_mb(), 1),
        chunks_written=chunks,
    )
    RunState(task.spec.store, task.run_id).mark_done(result)
    return result
