"""A run's task list, stored compactly: one item table, one row per task, one header.

The tasks of a plan share their STAC items (a scene overlaps many tiles and the planner gives every
tile x bin its own task), so writing every task with its items (the SQS message bodies) repeated
each item ~10 times: 3.9 GB for a Brazil year. Here each minimal item is written **once**::

    tasks.json        TaskListHeader: format, run id, count, spec, grid, bins, item ids
    tasks.rows.zst    one row per task, in plan order: [iy, ix, y0, x0, ny, nx, bin, t, [item, ...]]
    items.ndjson.zst  the minimal items, one JSON document per line, numbered from 0

Both data files are a sequence of blocks, each ``<u32 frame bytes><u32 lines>`` (little endian)
followed by one zstd frame (numcodecs, level 1) of that many newline-terminated lines, so they
are read as a stream (local file or S3 object) without holding them decoded. The header is
written last: its presence means the list is whole (the run record, written after it, says so too).

Reading never builds all tasks at once: :meth:`TaskList.rows` streams compact :class:`TaskRow`
tuples (ids, tiles, item numbers), :meth:`TaskList.tasks` streams full :class:`~cubeless.models.Task`
objects (the worker's message: only that task's items), taking items from :class:`ItemTable`,
which keeps the compressed table in memory and decodes a bounded number of blocks at a time
(items are numbered in order of first use, and tasks come tile by tile, so a window suffices).
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple

from numcodecs import Zstd
from pydantic import BaseModel, ConfigDict

from . import fs
from .errors import PlanError
from .models import Grid, Task, Tile
from .spec import CubeSpec
from .timebins import TimeBin

HEADER = "tasks.json"
ROWS = "tasks.rows.zst"
ITEMS = "items.ndjson.zst"
#: Version of this layout (a run written by a later version is refused with the fix).
FORMAT = 2
#: A block is flushed once its uncompressed lines reach this many bytes.
BLOCK_BYTES = 1 << 20
#: Decoded item blocks kept by :class:`ItemTable` (each ~1 MiB of JSON, ~300 Brazil items).
ITEM_BLOCKS_CACHED = 48
_ZSTD = Zstd(level=1)
_PREFIX = struct.Struct("<II")


class TaskListHeader(BaseModel):
    """``tasks.json``: what every task of the run shares, and the item table's ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[2] = FORMAT
    run_id: str
    count: int  #: tasks (rows)
    spec: CubeSpec | None  #: None only for a run without tasks planned without a spec
    grid: Grid | None
    bins: list[TimeBin]  #: the bins rows refer to by position
    item_ids: list[str | None]  #: id of item i of the table (None for an item without an id)
    rows_bytes: int = 0
    items_bytes: int = 0


class TaskRow(NamedTuple):
    """One task in compact form (no spec, grid or item bodies)."""

    task_id: str
    tile: tuple[int, int, int, int, int, int]  #: iy, ix, y0, x0, ny, nx
    bin: int  #: position in :attr:`TaskListHeader.bins`
    t: int
    items: list[int]  #: positions in the item table


# -- blocks ---------------------------------------------------------------------------------------
class _BlockWriter:
    """Lines -> length-prefixed zstd blocks on a binary stream."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._lines: list[bytes] = []
        self._size = 0
        self.bytes = 0

    def add(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= BLOCK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        self._lines.append(b"")
        frame = _ZSTD.encode(b"\n".join(self._lines))
        self._out.write(_PREFIX.pack(len(frame), len(self._lines) - 1))
        self._out.write(frame)
        self.bytes += _PREFIX.size + len(frame)
        self._lines, self._size = [], 0


def _read_exact(f: Any, n: int, uri: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{uri} is truncated; plan the run again")
    return bytes(data)


def _frames(uri: str) -> Iterator[tuple[int, bytes]]:
    """(line count, compressed frame) of each block of a block file, streamed."""
    fsys, path = fs.filesystem(uri)
    with fsys.open(path, "rb") as f:
        while True:
            head = f.read(_PREFIX.size)
            if not head:
                return
            if len(head) != _PREFIX.size:
                raise ValueError(f"{uri} is truncated; plan the run again")
            size, lines = _PREFIX.unpack(head)
            yield lines, _read_exact(f, size, uri)


def _lines(frame: bytes, count: int, uri: str) -> list[bytes]:
    lines = bytes(_ZSTD.decode(frame)).split(b"\n")
    if len(lines) != count + 1 or lines[-1]:
        raise ValueError(f"{uri} has a damaged block; plan the run again")
    lines.pop()
    return lines


# -- writing --------------------------------------------------------------------------------------
def write_task_list(
    root: str, tasks: Iterable[Task], *, run_id: str, spec: CubeSpec | None = None, atomic: Callable[[str], Any]
) -> TaskListHeader:
    """Stream ``tasks`` into the three files under ``root`` (see the module docstring).

    ``atomic(uri)`` opens a binary writer whose object appears only on a clean close. Refuses
    (ValueError, nothing published) a task of another run, a task id planned twice, and tasks whose
    spec or grid differ from the first task's.
    """
    from pydantic_core import to_json

    seen: set[str] = set()
    item_pos: dict[Any, int] = {}
    item_ids: list[str | None] = []
    bins: list[TimeBin] = []
    bin_pos: dict[tuple[Any, Any], int] = {}
    grid: Grid | None = None
    first_spec: CubeSpec | None = None
    count = 0
    with atomic(fs.join(root, ITEMS)) as items_out, atomic(fs.join(root, ROWS)) as rows_out:
        items_w, rows_w = _BlockWriter(items_out), _BlockWriter(rows_out)
        for task in tasks:
            tid = task.task_id
            if task.run_id != run_id:
                raise ValueError(f"task {tid} belongs to run {task.run_id}, not {run_id}")
            if tid in seen:
                raise ValueError(f"task id {tid} is planned twice; each tile x bin is one task")
            seen.add(tid)
            if first_spec is None:
                first_spec, grid = task.spec, task.grid
            elif (task.spec is not first_spec and task.spec != first_spec) or (task.grid is not grid and task.grid != grid):
                raise ValueError(f"task {tid} has another spec or grid than the run's first task")
            b = task.bin
            bi = bin_pos.get((b.start, b.end))
            if bi is None:
                bi = bin_pos[(b.start, b.end)] = len(bins)
                bins.append(b)
            refs = []
            for item in task.items:
                iid = item.get("id")
                key = iid if isinstance(iid, str) else ("", id(item))
                pos = item_pos.get(key)
                if pos is None:
                    pos = item_pos[key] = len(item_ids)
                    item_ids.append(iid if isinstance(iid, str) else None)
                    items_w.add(to_json(item))
                refs.append(pos)
            tl = task.tile
            rows_w.add(json.dumps([tl.iy, tl.ix, tl.y0, tl.x0, tl.ny, tl.nx, bi, task.t, refs], separators=(",", ":")).encode())
            count += 1
        items_w.flush()
        rows_w.flush()
    if spec is None:
        spec = first_spec
    header = TaskListHeader(
        run_id=run_id, count=count, spec=spec, grid=grid, bins=bins, item_ids=item_ids,
        rows_bytes=rows_w.bytes, items_bytes=items_w.bytes,
    )
    fs.put_bytes(fs.join(root, HEADER), header.model_dump_json().encode())
    return header


# -- reading --------------------------------------------------------------------------------------
class ItemTable:
    """The run's minimal items by position: the compressed table in memory, a window decoded.

    ``get(i)`` returns the same dict for the same item while its block stays decoded (tasks that
    share an item share its dict, so a :class:`~cubeless.models.TaskEncoder` serializes it once).
    Items are read-only.
    """

    def __init__(self, uri: str, *, cached_blocks: int = ITEM_BLOCKS_CACHED) -> None:
        self.uri = uri
        self._frames: list[bytes] = []
        self._counts: list[int] = []
        self._starts: list[int] = []
        n = 0
        for lines, frame in _frames(uri):
            self._frames.append(frame)
            self._counts.append(lines)
            self._starts.append(n)
            n += lines
        self.count = n
        self._cache: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._cached = max(1, cached_blocks)
        self.blocks_decoded = 0

    def __len__(self) -> int:
        return self.count

    def _block(self, i: int) -> int:
        import bisect

        return bisect.bisect_right(self._starts, i) - 1

    def get(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.count:
            raise IndexError(f"item {i} is not in the run's item table ({self.count} items); plan the run again")
        b = self._block(i)
        items = self._cache.get(b)
        if items is None:
            items = [json.loads(line) for line in _lines(self._frames[b], self._counts[b], self.uri)]
            self.blocks_decoded += 1
            self._cache[b] = items
            if len(self._cache) > self._cached:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return items[i - self._starts[b]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for b in range(len(self._frames)):
            yield from (json.loads(line) for line in _lines(self._frames[b], self._counts[b], self.uri))


@dataclass
class TaskList:
    """A stored task list (format 2), read as streams. Cheap to construct (reads the header only)."""

    root: str
    header: TaskListHeader

    @classmethod
    def open(cls, root: str) -> "TaskList":
        """The task list under ``root``; FileNotFoundError if it has none (or only the old format)."""
        raw = fs.get_bytes(fs.join(root, HEADER))
        try:
            fmt = json.loads(raw).get("format")
        except (ValueError, AttributeError):
            fmt = None
        if fmt != FORMAT:
            raise PlanError(
                f"{fs.join(root, HEADER)} is task list format {fmt!r}, this cubeless reads {FORMAT}; "
                "use the cubeless version that planned the run, or delete the run's directory and plan it again"
            )
        return cls(root, TaskListHeader.model_validate_json(raw))

    def __len__(self) -> int:
        return self.header.count

    def rows(self) -> Iterator[TaskRow]:
        """Every task in plan order, compact (bounded memory: one block decoded at a time)."""
        uri = fs.join(self.root, ROWS)
        labels = [b.label for b in self.header.bins]
        n = 0
        for count, frame in _frames(uri):
            for line in _lines(frame, count, uri):
                iy, ix, y0, x0, ny, nx, b, t, refs = json.loads(line)
                n += 1
                yield TaskRow(f"{labels[b]}.y{iy}.x{ix}", (iy, ix, y0, x0, ny, nx), b, t, refs)
        if n != self.header.count:
            raise ValueError(f"{uri} holds {n} tasks, its header {self.header.count}; plan the run again")

    def ids(self) -> Iterator[str]:
        return (r.task_id for r in self.rows())

    def items(self, **kw: Any) -> ItemTable:
        return ItemTable(fs.join(self.root, ITEMS), **kw)

    def tasks(self, skip: set[str] | frozenset[str] = frozenset(), *, items: ItemTable | None = None) -> Iterator[Task]:
        """Full tasks (each with only its own items) in plan order, except those in ``skip``."""
        from .plan import _task_factory

        h = self.header
        if h.count == 0:
            return
        table = items if items is not None else self.items()
        make = _task_factory(run_id=h.run_id, spec=h.spec, grid=h.grid)
        tile_new = Tile.model_construct
        get = table.get
        for row in self.rows():
            if row.task_id in skip:
                continue
            iy, ix, y0, x0, ny, nx = row.tile
            yield make(
                tile=tile_new(iy=iy, ix=ix, y0=y0, x0=x0, ny=ny, nx=nx), bin=h.bins[row.bin], t=row.t,
                items=[get(i) for i in row.items],
            )


class PendingTasks:
    """The tasks of a stored run not yet done: a sized, re-iterable stream (never all in memory).

    ``ids()`` streams every planned task id, ``tasks(skip)`` the tasks not in ``skip``."""

    def __init__(self, ids: Callable[[], Iterable[str]], tasks: Callable[[set[str]], Iterator[Task]], done: set[str]) -> None:
        self._tasks = tasks
        self._done = done
        self._len = sum(1 for i in ids() if i not in done)

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Task]:
        return self._tasks(self._done)
