"""Run state: record, streamed task list and its index, done/failed markers (local disk)."""

from __future__ import annotations

import json
import os
import time
from datetime import date, datetime, timezone

import pytest

from cubeless.grid import cube_geobox, grid_of, tile_at
from cubeless.models import RunRecord, Task, TaskResult
from cubeless.spec import parse_spec
from cubeless.state import RunState
from cubeless.timebins import TimeBin


def spec(tmp_path):
    return parse_spec(
        {"name": "st", "bbox": [10.0, 45.0, 10.05, 45.03], "start": "2020-01-01", "end": "2020-01-31",
         "store": str(tmp_path / "c.zarr"), "chunk": 64}
    )


BIN = TimeBin(start=date(2020, 1, 1), end=date(2020, 2, 1))


def make_tasks(s, n: int, run_id: str = "run-1", items_per_task: int = 2) -> list[Task]:
    gb = cube_geobox(s)
    grid = grid_of(gb, s.crs)
    tile = tile_at(gb, s.chunk, 0, 0)
    out = []
    for i in range(n):
        # An item id is one item: the same content wherever it is used (the task list stores it once).
        items = [{"id": f"S2_{(i + k) % 50}", "assets": {"red": {"href": f"https://x/{(i + k) % 50}.tif"}}} for k in range(items_per_task)]
        t = tile.model_copy(update={"iy": i // 1000, "ix": i % 1000})
        out.append(Task(run_id=run_id, spec=s, grid=grid, tile=t, bin=BIN, t=0, items=items))
    return out


def record(s, run_id: str = "run-1", n: int = 3) -> RunRecord:
    st = RunState(s.store, run_id)
    return RunRecord(
        run_id=run_id, cube=s.name, store=s.store, bins=[BIN], task_count=n, tiles_total=n, tiles_on_land=n,
        items_found=10, tasks_uri=st.tasks_uri, created=datetime.now(timezone.utc),
    )


def test_record_roundtrip_and_exists(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    assert not st.exists()
    with pytest.raises(FileNotFoundError):
        st.read_record()
    rec = record(s)
    st.write_record(rec)
    assert st.exists() and st.read_record() == rec
    assert os.path.exists(tmp_path / "c.zarr" / "_cubeless" / "runs" / "run-1" / "run.json")
    with pytest.raises(ValueError):
        st.write_record(rec.model_copy(update={"run_id": "other"}))
    with pytest.raises(ValueError):
        RunState(s.store, "../x")


def test_tasks_stream_roundtrip_items_stored_once(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    tasks = make_tasks(s, 5)
    uri = st.write_tasks(iter(tasks))
    assert uri == st.tasks_uri and uri.endswith("_cubeless/runs/run-1/tasks.json")
    assert list(st.iter_tasks()) == tasks
    assert [t.model_dump_json() for t in st.iter_tasks()] == [t.model_dump_json() for t in tasks]
    assert st.task_ids() == [t.task_id for t in tasks]
    assert st.spec() == s
    idx = st.read_index()
    assert idx["count"] == 5 and sorted(idx["items"]) == [f"S2_{i}" for i in range(6)]
    assert [[idx["items"][p] for p in refs] for refs in idx["task_items"]] == [[i["id"] for i in t.items] for t in tasks]
    # Each item is in the table once (10 references, 6 items), in order of first use.
    tl = st.task_list()
    assert tl is not None and len(tl) == 5
    assert [i["id"] for i in tl.items()] == [f"S2_{i}" for i in range(6)]
    assert not os.path.exists(st.legacy_tasks_uri)


def test_item_table_decodes_a_bounded_window(tmp_path, monkeypatch):
    import cubeless.tasklist as tasklist

    monkeypatch.setattr(tasklist, "BLOCK_BYTES", 200)  # a block per item or two
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    tasks = make_tasks(s, 60, items_per_task=3)
    st.write_tasks(tasks)
    tl = st.task_list()
    assert tl is not None
    table = tl.items(cached_blocks=2)
    assert len(table._frames) > 10 and len(table) == 50
    got = list(tl.tasks(items=table))
    assert got == tasks
    assert len(table._cache) <= 2 and table.blocks_decoded > len(table._frames)
    # Skipped tasks are not built; rows are compact tuples.
    skip = {t.task_id for t in tasks[::2]}
    assert [t.task_id for t in st.iter_tasks(skip)] == [t.task_id for t in tasks[1::2]]
    row = next(tl.rows())
    assert row.task_id == tasks[0].task_id and row.items == [0, 1, 2] and row.tile[:2] == (0, 0)


def test_pending_is_sized_and_streams_what_is_not_done(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    tasks = make_tasks(s, 6)
    st.write_tasks(tasks)
    for t in tasks[:4]:
        st.mark_done(TaskResult(task_id=t.task_id, status="done"))
    todo = st.pending()
    assert len(todo) == 2 and bool(todo)
    assert list(todo) == tasks[4:] and list(todo) == tasks[4:]  # re-iterable


def test_legacy_run_is_read_and_a_newer_format_refused(tmp_path):
    from cubeless.errors import PlanError

    s = spec(tmp_path)
    st = RunState(s.store, "old")
    tasks = make_tasks(s, 4, run_id="old")
    os.makedirs(st.root)
    with open(st.legacy_tasks_uri, "w") as f:  # a run planned before the item table
        f.writelines(t.model_dump_json() + "\n" for t in tasks)
    assert st.task_list() is None
    assert list(st.iter_tasks()) == tasks and st.task_ids() == [t.task_id for t in tasks]
    assert st.spec() == s
    idx = st.read_index()
    assert idx["count"] == 4 and [[idx["items"][p] for p in r] for r in idx["task_items"]] == [[i["id"] for i in t.items] for t in tasks]
    st.mark_done(TaskResult(task_id=tasks[0].task_id, status="done"))
    assert list(st.pending()) == tasks[1:]

    new = RunState(s.store, "new")
    new.write_tasks(make_tasks(s, 2, run_id="new"))
    with open(new.tasks_uri) as f:
        doc = json.load(f)
    with open(new.tasks_uri, "w") as f:
        json.dump({**doc, "format": 3}, f)
    with pytest.raises(PlanError, match="task list format 3, this cubeless reads 2; use the cubeless version"):
        list(new.iter_tasks())


def test_no_task_list_is_file_not_found(tmp_path):
    st = RunState(spec(tmp_path).store, "none")
    with pytest.raises(FileNotFoundError):
        st.task_ids()


def test_task_encoder_with_a_small_cache_gives_the_same_bytes(tmp_path):
    from cubeless.models import TaskEncoder

    tasks = make_tasks(spec(tmp_path), 30, items_per_task=4)
    encode = TaskEncoder(max_items=3)
    assert [encode(t) for t in tasks] == [t.model_dump_json().encode() for t in tasks]
    assert len(encode._items) == 3


def test_write_tasks_refuses_duplicates_and_foreign_runs_without_publishing(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    tasks = make_tasks(s, 3)
    with pytest.raises(ValueError, match="planned twice"):
        st.write_tasks(tasks + tasks[:1])
    with pytest.raises(ValueError, match="belongs to run"):
        st.write_tasks(make_tasks(s, 2, run_id="run-2"))
    assert not os.path.exists(st.tasks_uri)
    assert not [f for f in os.listdir(os.path.dirname(st.tasks_uri)) if f.endswith(".partial")]
    assert os.listdir(os.path.dirname(st.tasks_uri)) == []


def test_empty_run_records_its_spec(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    st.write_tasks([], spec=s)
    assert list(st.iter_tasks()) == [] and st.task_ids() == [] and st.spec() == s


def test_markers_latest_failure_kept_and_done_wins(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    assert st.done_ids() == set() and st.failures() == {}
    st.mark_failed(TaskResult(task_id="a", status="failed", attempts=1, error="boom 1"))
    st.mark_failed(TaskResult(task_id="a", status="failed", attempts=2, error="boom 2"))
    st.mark_failed(TaskResult(task_id="b", status="failed", error="nope"))
    st.mark_done(TaskResult(task_id="c", status="done", seconds=1.5))
    f = st.failures()
    assert set(f) == {"a", "b"} and f["a"].error == "boom 2" and f["a"].attempts == 2
    st.mark_done(TaskResult(task_id="a", status="done", attempts=3, seconds=2.0))
    assert st.done_ids() == {"a", "c"}
    assert set(st.failures()) == {"b"}
    assert {r.task_id: r.seconds for r in st.done_results()} == {"a": 2.0, "c": 1.5}
    assert len(st.done_results(sample=1)) == 1
    with pytest.raises(ValueError):
        st.mark_done(TaskResult(task_id="x", status="failed"))
    with pytest.raises(ValueError):
        st.mark_failed(TaskResult(task_id="x", status="done"))


def test_100000_tasks_stream_fast(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "big")
    proto = make_tasks(s, 1, run_id="big", items_per_task=8)[0]

    def gen():
        for i in range(100_000):
            yield proto.model_copy(update={"tile": proto.tile.model_copy(update={"iy": i // 1000, "ix": i % 1000})})

    t0 = time.perf_counter()
    st.write_tasks(gen())
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = st.task_ids()
    t_ids = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in st.iter_tasks())
    t_iter = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(st.root, f)) for f in os.listdir(st.root)) / 2**20
    print(f"\n100,000 tasks: write {t_write:.2f} s ({size:.0f} MiB), ids {t_ids:.2f} s, iter {t_iter:.2f} s")
    assert len(ids) == n == 100_000
    assert t_write < 30 and t_ids < 5


def test_done_ids_for_10000_markers_is_one_listing(tmp_path):
    s = spec(tmp_path)
    st = RunState(s.store, "run-1")
    for i in range(10_000):
        st.mark_done(TaskResult(task_id=f"2020-01-01.y{i // 100}.x{i % 100}", status="done", seconds=0.1))
    t0 = time.perf_counter()
    done = st.done_ids()
    dt = time.perf_counter() - t0
    print(f"\ndone_ids over 10,000 local markers: {dt * 1000:.0f} ms")
    assert len(done) == 10_000 and dt < 5
