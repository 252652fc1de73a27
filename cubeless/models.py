"""One typed model per boundary: the task message, a task's outcome, the run record, the manifest.

The cube spec itself is :class:`cubeless.spec.CubeSpec`. These models are what the planner hands to
workers (locally through a process pool, on AWS through SQS), what workers report, and what the
commit step publishes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .spec import CubeSpec
from .timebins import TimeBin


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tile(Model):
    """A chunk-sized window of the cube grid. Edge tiles are smaller; ``y0``/``x0`` are true offsets."""

    iy: int = Field(ge=0)  #: tile row
    ix: int = Field(ge=0)  #: tile column
    y0: int = Field(ge=0)  #: first pixel row in the cube grid
    x0: int = Field(ge=0)  #: first pixel column in the cube grid
    ny: int = Field(gt=0)  #: rows (== chunk except on the last tile row)
    nx: int = Field(gt=0)  #: columns (== chunk except on the last tile column)


class Grid(Model):
    """The cube grid in plain numbers: enough to rebuild its GeoBox anywhere (no AOI file needed)."""

    crs: str  #: as in the spec (e.g. ``EPSG:32633``)
    transform: tuple[float, float, float, float, float, float]  #: affine a, b, c, d, e, f
    height: int = Field(gt=0)
    width: int = Field(gt=0)


class Task(Model):
    """One unit of work: one tile x one time bin. This is the SQS message body."""

    run_id: str
    spec: CubeSpec
    grid: Grid
    tile: Tile
    bin: TimeBin
    t: int = Field(ge=0)  #: index of ``bin`` on the cube's time axis
    #: Minimal STAC items (only the assets and properties loading needs) overlapping the tile and
    #: falling in the bin. Found once by the planner: workers never query the catalog.
    items: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def task_id(self) -> str:
        """Stable id, e.g. ``2020-01-01.y3.x12``; safe in object keys."""
        return f"{self.bin.label}.y{self.tile.iy}.x{self.tile.ix}"


def task_id_stems(bins: "list[TimeBin] | tuple[TimeBin, ...]") -> list[str]:
    """Prefixes that partition the ids of tasks in ``bins``: every :attr:`Task.task_id` starts
    with exactly one (its bin's label, ``.y`` and the first digit of its tile row), so a run's
    markers can be listed as ten listings per bin, concurrently."""
    return [f"{b.label}.y{d}" for b in bins for d in range(10)]


class TaskEncoder:
    """Serializes tasks to exactly the bytes of ``task.model_dump_json()``, each STAC item once.

    The tasks of a plan share their item dicts (a scene overlaps many tiles; see
    :mod:`cubeless.plan`), and pydantic serializes an untyped dict about ten times slower than
    bytes are joined: planning and enqueueing a run spent most of their CPU re-serializing the same
    items. Items are remembered by identity (the encoder keeps them alive, so an identity is never
    reused), so a dict that was changed after its first use must not be passed again; use one
    encoder per batch of tasks. Not thread-safe.
    """

    #: Encoded items remembered (least recently used dropped): bounded memory over a stream of
    #: tasks whose items come and go (a resumed run's :class:`~cubeless.tasklist.ItemTable`).
    MAX_ITEMS = 16_384

    def __init__(self, max_items: int = MAX_ITEMS) -> None:
        from collections import OrderedDict

        self._items: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()
        self._max = max_items

    def __call__(self, task: Task) -> bytes:
        from pydantic_core import to_json

        head = task.model_dump_json(exclude={"items"}).encode()
        parts = []
        cache = self._items
        for item in task.items:
            got = cache.get(id(item))
            if got is None or got[0] is not item:
                got = cache[id(item)] = (item, to_json(item))
                if len(cache) > self._max:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(id(item))
            parts.append(got[1])
        # ``items`` is the last field of Task, so it closes the object as model_dump_json does.
        return b"".join((head[:-1], b',"items":[', b",".join(parts), b"]}"))


class TaskResult(Model):
    """What one attempt at a task reports."""

    task_id: str
    status: Literal["done", "failed"]
    attempts: int = 1
    error: str | None = None
    seconds: float = 0.0
    items: int = 0  #: scenes loaded
    observations: int = 0  #: solar-day observations after grouping
    valid_fraction: float = 0.0  #: share of (observation, pixel) pairs that were valid
    bytes_read: int = 0
    peak_rss_mb: float = 0.0
    chunks_written: int = 0


class RunRecord(Model):
    """What the planner returns: small enough for a Step Functions state (never the task list)."""

    run_id: str
    cube: str  #: spec name
    store: str
    bins: list[TimeBin]  #: bins this run fills
    task_count: int
    tiles_total: int
    tiles_on_land: int
    items_found: int
    tasks_uri: str  #: where the task list lives (its header; older runs: ndjson, one Task per line)
    lanes: int = 1
    created: datetime
    estimated_bytes: int = 0


class CostEstimate(Model):
    """Lambda + Step Functions cost of a run, in USD (list prices, us-east-1, arm64)."""

    gb_seconds: float
    requests: int
    state_transitions: int
    lambda_usd: float
    step_functions_usd: float
    total_usd: float
    usd_per_1000_tasks: float


class Manifest(Model):
    """Written by the commit step. A cube is complete exactly when ``complete`` is true."""

    cubeless_version: str
    run_id: str
    spec: CubeSpec
    complete: bool
    committed_bins: list[TimeBin]  #: every time step readers can see, after this commit
    run_bins: list[TimeBin]  #: time steps this run filled
    tasks_planned: int
    tasks_done: int
    tasks_failed: int
    failures: dict[str, str] = Field(default_factory=dict)  #: task id -> last error
    missing: list[str] = Field(default_factory=list)  #: task ids neither done nor failed
    items_used: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    packages: dict[str, str] = Field(default_factory=dict)
    cost: CostEstimate | None = None
    created: datetime
    #: Icechunk format: the snapshot id on main that holds this run (also tagged with the run id).
    snapshot: str | None = None


def run_id_for(spec: CubeSpec, bins: list[TimeBin]) -> str:
    """Deterministic run id: the same spec filling the same bins is the same run (resume, dedupe)."""
    key = spec.canonical_json() + "|" + ",".join(b.label for b in bins)
    return f"{spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
