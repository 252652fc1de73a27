"""Plan a run, or find the interrupted run of the same spec: what the local runner and the AWS
planner both do before any task runs (the spec, the catalog and the store are checked before
anything is written; the cube lock is taken before the first write)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection

from .models import RunRecord, Task
from .plan import DEFAULT_MAX_TASKS
from .spec import CubeSpec
from .state import CubeLock, RunState

if TYPE_CHECKING:
    from .search import SearchStats


@dataclass(frozen=True)
class Prepared:
    """A run ready to execute: planned (or resumed) tasks and what is left of them."""

    record: RunRecord | None  #: None when the cube is already up to date
    #: Tasks left to do: a list after planning, a sized stream (:class:`~cubeless.tasklist.PendingTasks`) on resume.
    todo: Collection[Task]
    already_done: int
    resumed: bool
    plan_seconds: float
    empty_bins: tuple[str, ...] = ()  #: labels of the run's bins without any scene (committed with count 0)


def prepare_run(
    spec: CubeSpec,
    *,
    max_tasks: int = DEFAULT_MAX_TASKS,
    lanes: int = 1,
    on_search: Callable[[int], None] | None = None,
    lock: CubeLock | None = None,
    search_stats: SearchStats | None = None,
) -> Prepared:
    """Plan a run, or find the interrupted run of the same spec and what it still has to do.

    Nothing is written until the plan has succeeded (spec, catalog and store all checked). With a
    ``lock``, it is acquired before the first write (:class:`~cubeless.state.CubeLocked` if another
    run of the cube holds it); if another run committed while this one planned, it plans again.
    """
    from .models import run_id_for
    from .plan import bins_to_fill, make_plan, record_for
    from .store import cube_state, ensure_cube

    t0 = time.perf_counter()
    while True:
        committed, origin = cube_state(spec)
        bins = bins_to_fill(spec, committed, origin)
        if not bins:
            return Prepared(None, [], 0, False, time.perf_counter() - t0)
        state = RunState(spec.store, run_id_for(spec, bins))
        plan = None if state.exists() else make_plan(
            spec, committed=committed, origin=origin, max_tasks=max_tasks, progress=on_search, stats=search_stats
        )
        if lock is not None and not lock.held:
            lock.acquire(state.run_id)
            if cube_state(spec) != (committed, origin):
                continue  # another run committed while this one planned: plan again, under the lock
        break
    if state.exists():  # an interrupted run (possibly planned by a run that ended while we planned)
        record = state.read_record()
        # Streamed: the todo list is read from the task list as it is consumed, never all at once.
        todo: Collection[Task] = state.pending()
        return Prepared(record, todo, record.task_count - len(todo), True, time.perf_counter() - t0,
                        empty_bins=tuple(state.empty_bins()))
    assert plan is not None
    with warnings.catch_warnings():  # the lock's `_cubeless/` is there before the cube: zarr notices
        warnings.filterwarnings("ignore", message="Object at _cubeless is not recognized", category=UserWarning)
        ensure_cube(spec, plan.grid)
    record = record_for(plan, tasks_uri=state.tasks_uri, lanes=lanes)
    if spec.format == "icechunk":  # the run's Icechunk session and the fork its tasks write through
        from .store import stage_run

        stage_run(state, record.bins)
    state.write_tasks(plan.tasks)
    state.write_record(record)  # written last: its presence means the task list is whole
    done = state.done_ids()
    todo = [t for t in plan.tasks if t.task_id not in done]
    from .plan import empty_bins

    return Prepared(record, todo, len(plan.tasks) - len(todo), False, time.perf_counter() - t0,
                    empty_bins=tuple(empty_bins(plan.tasks)))
