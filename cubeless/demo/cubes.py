"""A planned run over every tile of a spec, without scenes or a search: for the tests and
benchmarks that write synthetic values straight through :func:`cubeless.store.write_task` and then
commit them with :func:`cubeless.commit.commit_run` (pyramids, the map server)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ..grid import cube_geobox, grid_of, iter_tiles
from ..models import Grid, RunRecord, Task, run_id_for
from ..spec import CubeSpec
from ..state import RunState
from ..timebins import time_bins


@dataclass
class PlannedRun:
    spec: CubeSpec
    grid: Grid
    state: RunState
    tasks: list[Task]  #: every tile of the grid in every bin of the spec, bin by bin

    @property
    def run_id(self) -> str:
        return self.state.run_id


def plan_every_tile(spec: CubeSpec) -> PlannedRun:
    """Create the cube and record a run whose tasks are every tile x every bin of ``spec``
    (task list and run record written, as the planner would; no task done yet)."""
    from .. import store as S

    gb = cube_geobox(spec)
    grid = grid_of(gb, spec.crs)
    info = S.ensure_cube(spec, grid)
    bins = time_bins(spec.start, spec.end, spec.interval)
    run_id = run_id_for(spec, bins)
    state = RunState(spec.store, run_id)
    tasks = [Task(run_id=run_id, spec=spec, grid=grid, tile=tile, bin=b, t=S.time_index(info.origin, b, spec.interval))
             for b in bins for tile in iter_tiles(gb, spec.chunk)]
    state.write_tasks(tasks)
    state.write_record(RunRecord(run_id=run_id, cube=spec.name, store=spec.store, bins=bins, task_count=len(tasks),
                                 tiles_total=len(tasks), tiles_on_land=len(tasks), items_found=0,
                                 tasks_uri=state.tasks_uri, created=datetime.now(timezone.utc)))
    return PlannedRun(spec=spec, grid=grid, state=state, tasks=tasks)
