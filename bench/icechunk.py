"""Icechunk format benchmarks (issue 12): task writes vs the Zarr format, bytes per fork, commit time
of a run with many forks, read time of one bin from both formats.

``python -m bench.icechunk [--forks 10000,100000] [--skip write,read,commit]`` prints one line per
figure; the same functions feed section 9 of ``python -m bench``. The commit of the forks runs in a
fresh process, so its peak RSS is the commit's (what sizes the commit Lambda).

The commit benchmark makes ``n`` real forks (one per task, each setting the chunks of one tile
through its own unpickled copy of the run's fork, as workers do); their chunks are one small
constant chunk, below Icechunk's inline threshold, so they live in the change sets (no chunk
objects): each change set is larger than a worker's (conservative for the merge), setup is cheap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from bench import peak_rss_mb


def _spec(store: str, fmt: str, *, bbox: list[float], chunk: int, bands: list[str]) -> Any:
    from cubeless.spec import parse_spec

    return parse_spec({
        "name": "ic-bench", "bbox": bbox, "start": "2024-05-01", "end": "2024-05-31", "resolution": 0.00027,
        "chunk": chunk, "bands": bands, "store": store, "format": fmt,
    })


def _setup(store: str, fmt: str, n: int, *, chunk: int, bands: list[str], bbox: list[float]) -> tuple[Any, list[Any]]:
    from cubeless import store as S
    from cubeless.grid import cube_geobox, grid_of, iter_tiles
    from cubeless.models import Task
    from cubeless.state import RunState
    from cubeless.timebins import time_bins

    spec = _spec(store, fmt, bbox=bbox, chunk=chunk, bands=bands)
    gb = cube_geobox(spec)
    grid = grid_of(gb, spec.crs)
    S.ensure_cube(spec, grid)
    b = time_bins(spec.start, spec.end, spec.interval)[0]
    tasks = []
    for tile in iter_tiles(gb, spec.chunk):
        if len(tasks) >= n:
            break
        tasks.append(Task(run_id="bench", spec=spec, grid=grid, tile=tile, bin=b, t=0))
    if len(tasks) < n:
        raise RuntimeError(f"the benchmark grid has only {len(tasks)} tiles")
    if fmt == "icechunk":
        S.stage_run(RunState(store, "bench"), [b])
    return spec, tasks


def _payload(task: Any, rng: np.random.Generator | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    shape = (task.tile.ny, task.tile.nx)
    if rng is None:  # constant, distinct per task: inlined chunks
        v = 1 + (task.tile.iy * 131 + task.tile.ix) % 60000
        return {b: np.full(shape, v, np.uint16) for b in task.spec.bands}, np.full(shape, 3, np.uint16)
    return {b: rng.integers(1, 10000, shape).astype(np.uint16) for b in task.spec.bands}, rng.integers(0, 30, shape).astype(np.uint16)


def write_throughput(chunk: int = 1200, tasks: int = 4) -> dict[str, float]:
    """Seconds per task of ``store.write_task`` (3 bands + count, realistic random DNs) per format."""
    from cubeless import store as S

    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for fmt in ("zarr", "icechunk"):
        with tempfile.TemporaryDirectory(prefix=f"cubeless-bench-{fmt}-") as tmp:
            _, ts = _setup(os.path.join(tmp, "cube"), fmt, tasks, chunk=chunk, bands=["red", "green", "blue"],
                           bbox=[0.0, 0.0, 1.0, 0.4])
            data = [_payload(t, rng) for t in ts]
            t0 = time.perf_counter()
            for t, (b, c) in zip(ts, data):
                S.write_task(t, b, c)
            out[f"{fmt}_write_s_per_task"] = (time.perf_counter() - t0) / len(ts)
            if fmt == "icechunk":
                from cubeless import icechunk_store as IC
                from cubeless.state import RunState

                state = RunState(ts[0].spec.store, "bench")
                sizes = [os.path.getsize(IC.fork_uri(state, t.task_id)) for t in ts]
                out["fork_bytes_real_task"] = float(statistics.median(sizes))
                t0 = time.perf_counter()
                IC.commit_run(state, [t.task_id for t in ts], message="bench", metadata={"run_id": "bench"})
                out["icechunk_commit_s_small"] = time.perf_counter() - t0
    return out


def make_forks(root: str, n: int) -> dict[str, Any]:
    """Stage a run of ``n`` tasks in a new cube under ``root`` and store one fork per task (a copy of
    the run's fork holding one tile's chunks of a band and ``count``), as ``n`` workers would; return
    the store, the setup seconds and the median fork size."""
    import pickle

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from cubeless import fs
    from cubeless import icechunk_store as IC
    from cubeless import store as S
    from cubeless.state import RunState

    side = int(np.ceil(np.sqrt(n))) * 64 * 0.00027 + 0.001
    t0 = time.perf_counter()
    store = os.path.join(root, "cube")
    _, ts = _setup(store, "icechunk", n, chunk=64, bands=["red"], bbox=[0.0, 0.0, side, side])
    state = RunState(ts[0].spec.store, "bench")
    S.write_task(ts[0], *_payload(ts[0], None))  # one real task: its encoded chunks stand for every task's
    first = pickle.loads(fs.get_bytes(IC.fork_uri(state, ts[0].task_id)))
    proto = default_buffer_prototype()
    enc = {v: sync(first.store.get(f"{v}/c/0/0/0", prototype=proto)) for v in ("red", "count")}
    base = fs.get_bytes(fs.join(state.root, IC.FORK_NAME))
    for t in ts[1:]:  # what each worker does, minus composing: chunks through its fork, fork stored
        fork = pickle.loads(base)
        for v, buf in enc.items():
            sync(fork.store.set(f"{v}/c/0/{t.tile.iy}/{t.tile.ix}", buf))
        IC.save_fork(state, t.task_id, fork)
    sizes = [os.path.getsize(IC.fork_uri(state, t.task_id)) for t in ts[:200]]
    return {"store": store, "setup_s": time.perf_counter() - t0, "fork_bytes_median": float(statistics.median(sizes))}


def commit_child(store: str) -> dict[str, Any]:
    """Body of the fresh process that commits the forks made by :func:`make_forks` (what the commit
    Lambda does for an Icechunk run, minus listing done markers and writing the manifest: section 5);
    its seconds and peak RSS (after imports, and for the whole process)."""
    import icechunk  # noqa: F401 - imported before the baseline RSS, as in a warm Lambda
    import zarr  # noqa: F401

    from cubeless import icechunk_store as IC
    from cubeless.state import RunState

    state = RunState(store, "bench")
    ids = sorted(name.removesuffix(".pickle") for name in os.listdir(os.path.join(state.root, IC.FORKS_DIR)))
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    _, figures = IC.commit_run(state, ids, message="bench", metadata={"run_id": "bench"})
    took = time.perf_counter() - t0
    return {"forks": float(len(ids)), "commit_s": took, "rss_before_mb": rss0,
            "peak_rss_mb": peak_rss_mb(),
            **{k: float(v) for k, v in figures.items()}}


def commit_forks(n: int) -> dict[str, Any]:
    """Make ``n`` forks (:func:`make_forks`), then time the merge + commit of all of them
    (:func:`cubeless.icechunk_store.commit_run`) in a fresh process, with its peak RSS."""
    import json
    import subprocess
    import sys

    from cubeless import store as S

    with tempfile.TemporaryDirectory(prefix="cubeless-bench-forks-") as tmp:
        made = make_forks(tmp, n)
        p = subprocess.run([sys.executable, "-m", "bench.icechunk", "--commit-child", made["store"]],
                           capture_output=True, text=True, check=True)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        shape = S.open_cube(made["store"], raw=True).red.shape
    if out["forks"] != n:
        raise RuntimeError(f"the commit saw {out['forks']:.0f} forks of {n}")
    return {**out, "setup_s": made["setup_s"], "fork_bytes_median": made["fork_bytes_median"], "cube_shape": str(shape)}


def read_bin(chunk: int = 600, tiles: int = 9, reps: int = 3) -> dict[str, float]:
    """Seconds to load one bin (all variables) with xarray, per format, same cube."""
    from cubeless import store as S

    out: dict[str, float] = {}
    rng = np.random.default_rng(1)
    for fmt in ("zarr", "icechunk"):
        with tempfile.TemporaryDirectory(prefix=f"cubeless-bench-read-{fmt}-") as tmp:
            store = os.path.join(tmp, "cube")
            _, ts = _setup(store, fmt, tiles, chunk=chunk, bands=["red", "green", "blue"], bbox=[0.0, 0.0, 0.5, 0.5])
            for t in ts:
                S.write_task(t, *_payload(t, rng))
            if fmt == "zarr":
                S.publish_bins(store, 1)
            else:
                from cubeless import icechunk_store as IC
                from cubeless.state import RunState

                IC.commit_run(RunState(store, "bench"), [t.task_id for t in ts], message="bench", metadata={})
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                S.open_cube(store, raw=True).isel(time=0).load()
                times.append(time.perf_counter() - t0)
            out[f"{fmt}_read_bin_s"] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.icechunk")
    ap.add_argument("--forks", default="10000,100000", help="comma-separated fork counts for the commit benchmark")
    ap.add_argument("--skip", default="", help="comma-separated: write, commit, read")
    ap.add_argument("--commit-child", metavar="STORE", help=argparse.SUPPRESS)  # commit_forks' fresh process
    a = ap.parse_args(argv)
    if a.commit_child:
        import json

        print(json.dumps(commit_child(a.commit_child)), flush=True)
        return 0
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if "write" not in skip:
        print("write", write_throughput(), flush=True)
    if "read" not in skip:
        print("read", read_bin(), flush=True)
    if "commit" not in skip:
        for n in (int(x) for x in a.forks.split(",") if x):
            print("commit", commit_forks(n), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
