"""Commit benchmark: verify and publish a 10,000-task run (done markers on local disk)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

ITEMS_PER_TASK = 25


def _make_run(store: str, n: int) -> str:
    """A planned run of ``n`` tasks (one bin), every task done: returns the run id."""
    from concurrent.futures import ThreadPoolExecutor

    from cubeless import store as S
    from cubeless.grid import cube_geobox, grid_of, iter_tiles
    from cubeless.models import RunRecord, Task, TaskResult, run_id_for
    from cubeless.spec import parse_spec
    from cubeless.state import RunState
    from cubeless.timebins import time_bins

    # ~120 x 120 tiles of 256 px at 0.00027 deg: more than n tiles in one bin.
    spec = parse_spec({
        "name": "commit-bench", "bbox": [0.0, 0.0, 8.3, 8.3], "start": "2024-05-01", "end": "2024-05-31",
        "resolution": 0.00027, "chunk": 256, "store": store,
    })
    gb = cube_geobox(spec)
    grid = grid_of(gb, spec.crs)
    info = S.ensure_cube(spec, grid)
    bins = time_bins(spec.start, spec.end, spec.interval)
    run_id = run_id_for(spec, bins)
    state = RunState(store, run_id)
    tasks = []
    for i, tile in enumerate(iter_tiles(gb, spec.chunk)):
        if i >= n:
            break
        items = [{"id": f"S2_{tile.iy}_{tile.ix // 4}_{k}"} for k in range(ITEMS_PER_TASK)]
        tasks.append(Task(run_id=run_id, spec=spec, grid=grid, tile=tile, bin=bins[0],
                          t=S.time_index(info.origin, bins[0], spec.interval), items=items))
    if len(tasks) < n:
        raise RuntimeError(f"the commit benchmark grid has only {len(tasks)} tiles")
    state.write_tasks(tasks)
    state.write_record(RunRecord(
        run_id=run_id, cube=spec.name, store=store, bins=bins, task_count=n, tiles_total=n, tiles_on_land=n,
        items_found=0, tasks_uri=state.tasks_uri, created=datetime.now(timezone.utc),
    ))

    def result(task: Task) -> TaskResult:
        return TaskResult(task_id=task.task_id, status="done", seconds=5.0, items=ITEMS_PER_TASK,
                          observations=ITEMS_PER_TASK, peak_rss_mb=500.0, chunks_written=4)

    if store.startswith("s3://"):  # one batched upload of the markers (setup, not timed)
        from cubeless import fs

        fsys, _ = fs.filesystem(store)
        fsys.pipe({fs.filesystem(state.done_uri(t.task_id))[1]: result(t).model_dump_json().encode() for t in tasks},
                  batch_size=256)
    else:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda t: state.mark_done(result(t)), tasks))
    return run_id


def commit(n: int = 10_000, reps: int = 3) -> dict[str, Any]:
    """Seconds of :func:`cubeless.commit.commit_run` over a complete ``n``-task run (median of
    ``reps``: the first commits, the others re-commit the same complete run)."""
    from cubeless.commit import commit_run

    with tempfile.TemporaryDirectory(prefix="cubeless-bench-commit-") as tmp:
        store = os.path.join(tmp, "cube.zarr")
        t0 = time.perf_counter()
        run_id = _make_run(store, n)
        setup = time.perf_counter() - t0
        times = []
        manifest = None
        for _ in range(reps):
            t0 = time.perf_counter()
            manifest = commit_run(store, run_id)
            times.append(time.perf_counter() - t0)
            if not manifest.complete or manifest.tasks_done != n:
                raise RuntimeError(f"the commit did not publish the run: {manifest.tasks_done}/{n} done")
        assert manifest is not None
        return {
            "tasks": n,
            "seconds": times[0],
            "recommit_seconds": statistics.median(times[1:]) if len(times) > 1 else None,
            "all": times,
            "setup_seconds": setup,
            "timings": {k: v for k, v in manifest.timings.items() if k.startswith("commit")},
        }


def commit_s3(n: int = 10_000, reps: int = 2) -> dict[str, Any]:
    """:func:`commit` with the store on S3 served by moto (its own process); run in a subprocess
    whose environment points s3fs at it (``AWS_ENDPOINT_URL``)."""
    import json
    import subprocess
    import sys

    from .planner import _free_port

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        env = dict(
            os.environ,
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        _wait_port(port)
        out = subprocess.run(
            [sys.executable, "-m", "bench.commit", "s3", str(n), str(reps)],
            env=env, capture_output=True, text=True, check=False,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if out.returncode != 0:
            raise RuntimeError(f"the S3 commit benchmark failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _main_s3(n: int, reps: int) -> dict[str, Any]:
    import s3fs

    from cubeless.commit import commit_run

    fsys = s3fs.S3FileSystem()
    if not fsys.exists("cubes"):
        fsys.mkdir("cubes")
    store = "s3://cubes/bench/cube.zarr"
    t0 = time.perf_counter()
    run_id = _make_run(store, n)
    setup = time.perf_counter() - t0
    times = []
    manifest = None
    for _ in range(reps):
        t0 = time.perf_counter()
        manifest = commit_run(store, run_id)
        times.append(time.perf_counter() - t0)
        if not manifest.complete or manifest.tasks_done != n:
            raise RuntimeError(f"the commit did not publish the run: {manifest.tasks_done}/{n} done")
    assert manifest is not None
    return {
        "tasks": n,
        "seconds": times[0],
        "all": times,
        "setup_seconds": setup,
        "timings": {k: v for k, v in manifest.timings.items() if k.startswith("commit")},
    }


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1] == "s3":
        res = _main_s3(int(sys.argv[2]), int(sys.argv[3]))
    else:
        res = commit(int(sys.argv[2]), int(sys.argv[3]))
    sys.stdout.write(json.dumps(res) + "\n")
    import os as _os

    sys.stdout.flush()
    _os._exit(0)  # s3fs/aiohttp sessions need no orderly teardown here
