"""The commit step: publish only complete runs, atomically for readers, idempotently; on S3 too."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cubeless import fs
from cubeless import store as S
from cubeless.commit import commit_run, read_manifest, summary
from cubeless.errors import CubelessError
from cubeless.grid import cube_geobox, grid_of, iter_tiles
from cubeless.models import RunRecord, Task, TaskResult, run_id_for
from cubeless.spec import parse_spec
from cubeless.state import RunState
from cubeless.timebins import TimeBin, time_bins

BASE = dict(name="cm", bbox=[10.0, 45.0, 10.05, 45.03], resolution=0.00027, chunk=64)  # 2 x 3 tiles


def make_spec(store: str, **kw):
    return parse_spec({**BASE, "start": "2020-01-01", "end": "2020-12-31", "store": store, **kw})


class Run:
    """A planned run over some bins of a cube: tasks written, record written, nothing executed."""

    def __init__(self, spec, bins: list[TimeBin], items_per_task: int = 2, max_tasks: int | None = None) -> None:
        self.spec = spec
        gb = cube_geobox(spec)
        self.grid = grid_of(gb, spec.crs)
        info = S.ensure_cube(spec, self.grid)
        self.run_id = run_id_for(spec, bins)
        self.state = RunState(spec.store, self.run_id)
        self.tasks = [
            Task(
                run_id=self.run_id, spec=spec, grid=self.grid, tile=tile, bin=b, t=S.time_index(info.origin, b, spec.interval),
                items=[{"id": f"S2_{b.label}_{tile.iy}_{tile.ix}_{k}"} for k in range(items_per_task)],
            )
            for b in bins
            for tile in iter_tiles(gb, spec.chunk)
        ][:max_tasks]
        self.bins = bins
        self.state.write_tasks(self.tasks)
        self.state.write_record(
            RunRecord(
                run_id=self.run_id, cube=spec.name, store=spec.store, bins=bins, task_count=len(self.tasks),
                tiles_total=len(self.tasks), tiles_on_land=len(self.tasks), items_found=0,
                tasks_uri=self.state.tasks_uri, created=datetime.now(timezone.utc),
            )
        )

    @staticmethod
    def value(task: Task) -> int:
        return 100 * (task.t + 1)

    def execute(self, task: Task, seconds: float = 1.0) -> None:
        arr = np.full((task.tile.ny, task.tile.nx), self.value(task), np.uint16)
        n = S.write_task(task, {b: arr for b in self.spec.bands}, np.full_like(arr, 4))
        self.state.mark_done(TaskResult(task_id=task.task_id, status="done", seconds=seconds, chunks_written=n))

    def execute_all(self) -> None:
        for i, task in enumerate(self.tasks):
            self.execute(task, seconds=float(i + 1))


def root_json(spec) -> bytes:
    return (Path(spec.store) / "zarr.json").read_bytes()


# -- local ------------------------------------------------------------------------------------------
def test_complete_run_is_published_with_its_manifest(tmp_path):
    spec = make_spec(str(tmp_path / "c.zarr"))
    bins = time_bins(date(2020, 1, 1), date(2020, 2, 29), "month")
    run = Run(spec, bins)
    run.execute_all()
    assert S.open_cube(spec.store).sizes["time"] == 0
    m = commit_run(spec.store, run.run_id, extra_timings={"plan_s": 1.25})
    assert m.complete and m.run_id == run.run_id and m.spec == spec
    assert [b.label for b in m.committed_bins] == ["2020-01-01", "2020-02-01"] and m.run_bins == bins
    assert m.tasks_planned == m.tasks_done == 12 and m.tasks_failed == 0 and not m.failures and not m.missing
    assert m.items_used == sorted(i["id"] for t in run.tasks for i in t.items)
    assert m.timings["task_seconds_sum"] == sum(range(1, 13)) and m.timings["task_seconds_p50"] == 6.5
    assert m.timings["plan_s"] == 1.25 and m.timings["commit_seconds"] > 0
    assert {"cubeless", "zarr", "xarray", "odc-stac", "numpy", "rasterio"} <= set(m.packages)
    assert m.packages["zarr"].startswith("3.")
    assert read_manifest(spec.store) == m == read_manifest(spec.store, run.run_id)
    assert "committed" in summary(m)

    ds = xr.open_zarr(spec.store, mask_and_scale=False)
    assert ds.sizes["time"] == 2 and ds.red.shape[0] == 2
    assert (ds.red.isel(time=1).values == 200).all() and (ds["count"].values == 4).all()


def test_incomplete_run_is_not_published_and_names_what_is_missing(tmp_path, caplog):
    spec = make_spec(str(tmp_path / "c.zarr"))
    bins = time_bins(date(2020, 1, 1), date(2020, 1, 31), "month")
    run = Run(spec, bins)
    for task in run.tasks[:-2]:
        run.execute(task)
    failed, missing = run.tasks[-2], run.tasks[-1]
    run.state.mark_failed(TaskResult(task_id=failed.task_id, status="failed", attempts=3, error="HTTP 403 on red"))
    before = root_json(spec)
    with caplog.at_level(logging.WARNING, logger="cubeless.commit"):
        m = commit_run(spec.store, run.run_id)
    assert not m.complete
    assert m.failures == {failed.task_id: "HTTP 403 on red"} and m.missing == [missing.task_id]
    assert m.tasks_done == 4 and m.tasks_failed == 1 and m.tasks_planned == 6
    assert m.committed_bins == [] and m.run_bins == bins
    assert "NOT committed" in caplog.text and missing.task_id in caplog.text
    assert "NOT committed" in summary(m)
    assert root_json(spec) == before  # arrays untouched
    assert S.open_cube(spec.store).sizes["time"] == 0
    assert read_manifest(spec.store) is None and read_manifest(spec.store, run.run_id) == m

    # Resume: the failed task succeeds later (done wins), the missing one runs; now it publishes.
    run.execute(failed)
    run.execute(missing)
    m2 = commit_run(spec.store, run.run_id)
    assert m2.complete and not m2.failures and len(m2.committed_bins) == 1
    assert (S.open_cube(spec.store, raw=True).red.values == 100).all()


def test_commit_is_idempotent_and_old_runs_do_not_steal_the_latest_manifest(tmp_path):
    spec = make_spec(str(tmp_path / "c.zarr"))
    jan, feb = time_bins(date(2020, 1, 1), date(2020, 2, 29), "month")
    a = Run(spec, [jan])
    a.execute_all()
    m1 = commit_run(spec.store, a.run_id)
    root = root_json(spec)
    m1b = commit_run(spec.store, a.run_id)
    assert m1b.complete and m1b.committed_bins == m1.committed_bins
    assert root_json(spec) == root  # nothing republished
    b = Run(spec, [feb])
    b.execute_all()
    mb = commit_run(spec.store, b.run_id)
    assert len(mb.committed_bins) == 2
    again = commit_run(spec.store, a.run_id)
    assert again.complete and len(again.committed_bins) == 2
    assert read_manifest(spec.store).run_id == b.run_id
    # A crash after publishing b but before its store manifest: committing b again repairs it.
    fs.put_bytes(fs.join(spec.store, "_cubeless/manifest.json"), m1.model_dump_json().encode())
    commit_run(spec.store, b.run_id)
    assert read_manifest(spec.store).run_id == b.run_id
    ds = S.open_cube(spec.store, raw=True)
    assert (ds.red.isel(time=0).values == 100).all() and (ds.red.isel(time=1).values == 200).all()


def test_interrupted_publish_is_repaired_by_committing_again(tmp_path, monkeypatch):
    spec = make_spec(str(tmp_path / "c.zarr"))
    run = Run(spec, time_bins(date(2020, 1, 1), date(2020, 1, 31), "month"))
    run.execute_all()

    def crash(store):
        raise RuntimeError("killed before consolidation")

    monkeypatch.setattr(S, "_consolidate", crash)
    with pytest.raises(RuntimeError):
        commit_run(spec.store, run.run_id)
    assert S.open_cube(spec.store).sizes["time"] == 0  # readers still see the old cube
    monkeypatch.undo()
    assert commit_run(spec.store, run.run_id).complete
    assert S.open_cube(spec.store).sizes["time"] == 1


def test_gap_in_bins_is_refused(tmp_path):
    spec = make_spec(str(tmp_path / "c.zarr"))
    mar = time_bins(date(2020, 3, 1), date(2020, 3, 31), "month")
    S.ensure_cube(spec, grid_of(cube_geobox(spec), spec.crs))
    run = Run(spec, mar)  # index 2 while nothing is committed
    run.state.write_tasks([], spec=spec)
    run.state.write_record(run.state.read_record().model_copy(update={"task_count": 0}))
    with pytest.raises(CubelessError, match="without gaps"):
        commit_run(spec.store, run.run_id)


def test_run_without_tasks_commits_empty_steps(tmp_path):
    spec = make_spec(str(tmp_path / "c.zarr"))
    run = Run(spec, time_bins(date(2020, 1, 1), date(2020, 1, 31), "month"))
    run.state.write_tasks([], spec=spec)
    run.state.write_record(run.state.read_record().model_copy(update={"task_count": 0}))
    m = commit_run(spec.store, run.run_id)
    assert m.complete and m.tasks_planned == 0 and len(m.committed_bins) == 1
    assert (S.open_cube(spec.store, raw=True).red.values == 0).all()


def test_missing_run_is_an_error(tmp_path):
    with pytest.raises(CubelessError, match="plan it first"):
        commit_run(str(tmp_path / "c.zarr"), "nope")


def test_readers_never_see_half_a_commit(tmp_path):
    spec = make_spec(str(tmp_path / "c.zarr"))
    bins = time_bins(date(2020, 1, 1), date(2020, 8, 31), "month")
    runs = [Run(spec, [b]) for b in bins]
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                ds = xr.open_zarr(spec.store, mask_and_scale=False)
                n = ds.sizes["time"]
                for v in ("red", "green", "blue", "count"):
                    if ds[v].shape[0] != n:
                        errors.append(f"{v} has {ds[v].shape[0]} steps, time has {n}")
                labels = [str(d)[:10] for d in ds.time.values.astype("datetime64[D]")]
                if labels != [b.label for b in bins[:n]]:
                    errors.append(f"time {labels}")
                if n:
                    last = ds.red.isel(time=n - 1).values
                    if not (last == 100 * n).all():
                        errors.append(f"step {n - 1} incomplete: {np.unique(last)}")
                seen.append(n)
            except Exception as exc:  # noqa: BLE001 - any failure to read is a violation
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        for run in runs:
            run.execute_all()
            time.sleep(0.02)
            assert commit_run(spec.store, run.run_id).complete
            time.sleep(0.02)
        # Let a reader observe the final commit too (a loaded machine may starve the threads).
        deadline = time.monotonic() + 30
        while (max(seen, default=0) < len(bins)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not errors, errors[:5]
    assert len(set(seen)) >= 4 and max(seen) == len(bins)
    print(f"\nreaders: {len(seen)} consistent opens across {len(bins)} commits")


def test_commit_of_10000_tasks_is_fast(tmp_path):
    # 100 x 100 tiles of 64 px: 10,000 tasks in one bin.
    spec = make_spec(str(tmp_path / "c.zarr"), bbox=[10.0, 44.0, 11.728, 45.728], end="2020-01-31")
    t0 = time.perf_counter()
    run = Run(spec, time_bins(date(2020, 1, 1), date(2020, 1, 31), "month"), items_per_task=5, max_tasks=10_000)
    assert len(run.tasks) == 10_000
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda t: run.state.mark_done(TaskResult(task_id=t.task_id, status="done", seconds=2.0)), run.tasks))
    t_mark = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = commit_run(spec.store, run.run_id)
    dt = time.perf_counter() - t0
    print(
        f"\n10,000-task commit on local disk: {dt:.2f} s (read {m.timings['commit_read_seconds']:.2f}, "
        f"list {m.timings['commit_list_seconds']:.2f}, publish {m.timings['commit_publish_seconds']:.2f}); "
        f"setup: write tasks {t_plan:.1f} s, 10,000 markers {t_mark:.1f} s"
    )
    assert m.complete and m.tasks_done == 10_000 and len(m.items_used) == 50_000
    assert m.timings["tasks_timed"] == 256 and m.timings["task_seconds_sum"] == pytest.approx(20_000)
    assert dt < 10


# -- S3 (moto) --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3():
    """A moto S3 server with a bucket; s3fs reaches it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    import s3fs

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        fsys = s3fs.S3FileSystem()
        if not fsys.exists("cubes"):  # moto's backend outlives one server in this process
            fsys.mkdir("cubes")
        yield fsys
        _close_s3_sessions()
    server.stop()


def _close_s3_sessions() -> None:
    """Close the aiohttp sessions of the asynchronous s3fs instances zarr made, then forget them all."""
    import s3fs
    from zarr.core.sync import sync

    for inst in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(inst, "_s3", None)
        if inst.asynchronous and client is not None:
            try:
                sync(client.__aexit__(None, None, None))
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_run_commit_and_read(s3):
    spec = make_spec("s3://cubes/it/cube.zarr/")
    assert spec.store == "s3://cubes/it/cube.zarr/"
    bins = time_bins(date(2020, 1, 1), date(2020, 2, 29), "month")
    run = Run(spec, bins)
    assert run.state.root == "s3://cubes/it/cube.zarr/_cubeless/runs/" + run.run_id
    assert s3.exists("cubes/it/cube.zarr/zarr.json") and run.state.exists()
    assert list(run.state.iter_tasks()) == run.tasks
    for task in run.tasks[:-1]:
        run.execute(task)
    run.state.mark_failed(TaskResult(task_id=run.tasks[-1].task_id, status="failed", error="timeout"))
    m = commit_run(spec.store, run.run_id)
    assert not m.complete and m.failures == {run.tasks[-1].task_id: "timeout"}
    assert S.open_cube(spec.store).sizes["time"] == 0

    run.execute(run.tasks[-1])
    m = commit_run(spec.store, run.run_id)
    assert m.complete and len(m.committed_bins) == 2
    assert m.timings["tasks_timed"] == 12 and m.timings["task_seconds_max"] == 1.0
    assert s3.exists("cubes/it/cube.zarr/_cubeless/manifest.json")
    ds = S.open_cube(spec.store, raw=True)
    assert ds.sizes["time"] == 2 and (ds.red.isel(time=1).values == 200).all()
    ds2 = xr.open_zarr("s3://cubes/it/cube.zarr", zarr_format=3)
    assert list(ds2.time.values.astype("datetime64[D]").astype(str)) == ["2020-01-01", "2020-02-01"]
    import rioxarray  # noqa: F401

    assert ds2.red.rio.crs.to_epsg() == 4326

    # done_ids is one paginated listing (more than 1,000 markers), not one GET per task.
    big = RunState(spec.store, "big")
    marker = TaskResult(task_id="x", status="done").model_dump_json().encode()
    s3.pipe({f"cubes/it/cube.zarr/_cubeless/runs/big/done/t{i:05d}.json": marker for i in range(1_200)})
    t0 = time.perf_counter()
    ids = big.done_ids()
    dt = time.perf_counter() - t0
    print(f"\ndone_ids over 1,200 markers on moto S3: {dt:.2f} s")
    assert len(ids) == 1_200 and "t00042" in ids


@pytest.mark.slow
def test_s3_commit_of_10000_tasks(s3):
    spec = make_spec("s3://cubes/big/cube.zarr", bbox=[10.0, 44.0, 11.728, 45.728], end="2020-01-31")
    run = Run(spec, time_bins(date(2020, 1, 1), date(2020, 1, 31), "month"), items_per_task=5, max_tasks=10_000)
    body = TaskResult(task_id="x", status="done", seconds=2.0).model_dump_json().encode()
    prefix = "cubes/big/cube.zarr/_cubeless/runs/" + run.run_id + "/done/"
    t0 = time.perf_counter()
    s3.pipe({prefix + t.task_id + ".json": body for t in run.tasks}, batch_size=256)
    t_mark = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = commit_run(spec.store, run.run_id)
    dt = time.perf_counter() - t0
    print(
        f"\n10,000-task commit on moto S3: {dt:.2f} s (read {m.timings['commit_read_seconds']:.2f}, "
        f"list {m.timings['commit_list_seconds']:.2f}, publish {m.timings['commit_publish_seconds']:.2f}); "
        f"markers written in {t_mark:.0f} s"
    )
    assert m.complete and m.tasks_done == 10_000
    assert dt < 60
