"""Planner benchmarks: land tiles of Brazil and of the world, and enqueueing tasks to SQS (moto)."""

from __future__ import annotations

import statistics
import time
from typing import Any

BRAZIL = (-74.0, -33.8, -34.8, 5.3)
WORLD = (-180.0, -90.0, 180.0, 90.0)
RESOLUTION = 0.00027
CHUNK = 1200


def land(reps: int = 3) -> dict[str, Any]:
    """Seconds of :func:`cubeless.land.land_tiles` (median of ``reps``, alternating Brazil/world).

    The first call of a process also loads the land mask (from the on-disk cache, or built from
    the package data once); it is reported apart as ``first_call_s``."""
    from shapely.geometry import box

    from cubeless.grid import _geobox
    from cubeless.land import land_tiles

    cases = {
        "brazil": (_geobox("EPSG:4326", RESOLUTION, BRAZIL), box(*BRAZIL)),
        "world": (_geobox("EPSG:4326", RESOLUTION, WORLD), None),
    }
    t0 = time.perf_counter()
    land_tiles(cases["brazil"][0], CHUNK, cases["brazil"][1])
    first = time.perf_counter() - t0
    out: dict[str, Any] = {"first_call_s": first}
    times: dict[str, list[float]] = {k: [] for k in cases}
    counts: dict[str, int] = {}
    for _ in range(reps):
        for name, (gb, region) in cases.items():
            t0 = time.perf_counter()
            counts[name] = len(land_tiles(gb, CHUNK, region))  # not kept alive into the next call
            times[name].append(time.perf_counter() - t0)
    for name, (gb, _) in cases.items():
        ny, nx = gb.shape.yx
        out[name] = {
            "seconds": statistics.median(times[name]),
            "all": times[name],
            "tiles_on_land": counts[name],
            "tiles_total": (-(-ny // CHUNK)) * (-(-nx // CHUNK)),
            "grid": [ny, nx],
        }
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def enqueue(template: Any, n: int = 2000, reps: int = 3) -> dict[str, Any]:
    """Tasks per second that :meth:`cubeless.aws.TaskQueue.enqueue` sends to an SQS queue served
    by moto on localhost (its own process, see :mod:`bench.moto_sqs`); ``template`` is a real task
    (its ~25 minimal items make a realistic body). Also the client's own capacity: tasks per
    second it serialises (and compresses) into batches (``TaskQueue._batches``) and botocore
    encodes, no network."""
    import subprocess
    import sys

    import boto3
    from botocore.config import Config

    from cubeless.aws import TaskQueue
    from cubeless.models import Tile

    side = int(n**0.5) + 1
    tasks = [
        template.model_copy(update={"tile": Tile(iy=i // side, ix=i % side, y0=0, x0=0, ny=1, nx=1)})
        for i in range(n)
    ]
    raw = len(tasks[0].model_dump_json().encode())
    body = len(TaskQueue("http://127.0.0.1:1/q")._entry(tasks[0])["MessageBody"].encode())  # as sent
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.moto_sqs", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the moto server did not start")
        sqs = boto3.client(
            "sqs",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 5}),
        )
        rates: list[float] = []
        batches = 0
        for r in range(reps):
            url = sqs.create_queue(QueueName=f"bench-{r}")["QueueUrl"]
            queue = TaskQueue(url, sqs=sqs)
            t0 = time.perf_counter()
            sent = queue.enqueue(tasks)
            dt = time.perf_counter() - t0
            depth = queue.depth().total
            if sent != n or depth != n:
                raise RuntimeError(f"enqueued {sent} of {n} tasks; the queue holds {depth}")
            rates.append(n / dt)
            sqs.delete_queue(QueueUrl=url)
        queue = TaskQueue("http://127.0.0.1:1/q", sqs=sqs)
        t0 = time.perf_counter()
        entries = list(queue._batches(tasks))
        model = sqs.meta.service_model.operation_model("SendMessageBatch")
        for b in entries:
            sqs._serializer.serialize_to_request({"QueueUrl": "http://127.0.0.1:1/q", "Entries": b}, model)
        client_rate = n / (time.perf_counter() - t0)
        batches = len(entries)
        return {
            "tasks": n,
            "tasks_per_s": statistics.median(rates),
            "all": rates,
            "client_tasks_per_s": client_rate,
            "body_bytes": body,
            "json_bytes": raw,
            "batches": batches,
            "tasks_per_batch": n / batches,
            "items_per_task": len(template.items),
            "threads": queue.threads,
        }
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ------------------------------------------------------------------------------------------------
# Brazil-year plan against the synthetic Earth Search (cubeless.demo.earth_search)
# ------------------------------------------------------------------------------------------------
BRAZIL_YEAR = {"name": "brazil", "bbox": [-74.0, -34.0, -34.7, 5.3], "start": "2024-01-01", "end": "2024-12-31",
               "interval": "month", "collection": "sentinel-2-c1-l2a", "resolution": RESOLUTION, "chunk": CHUNK}
GOAL_PLAN_S = 120.0
GOAL_PLAN_MB = 1536.0


#: The 10 m case: the same Brazil year at 0.00009 deg (about 10 m), more tasks than the default cap.
RESOLUTION_10M = 0.00009
GOAL_10M_S = 600.0
GOAL_10M_MB = 3072.0
#: The resume path: the Brazil-year run exists with half its tasks done.
GOAL_RESUME_S = 30.0
GOAL_RESUME_MB = 1024.0


def _spec(url: str, store: str, **extra: Any) -> Any:
    from cubeless.spec import parse_spec

    return parse_spec({**BRAZIL_YEAR, "stac_api": url, "store": store, **extra})


def _child(mode: str, url: str, store: str, *args: str) -> dict[str, Any]:
    """In a fresh process (its peak RSS is the figure):

    * ``plan [resolution max_tasks]``: plan + task list written (and the cube and run record, so
      that ``resume`` finds the run);
    * ``mark``: setup, not measured: done markers for every other task of the planned run;
    * ``resume``: the planner's resume path: :func:`cubeless.prepare.prepare_run` finds the run,
      then every pending task is encoded into SQS batches (``TaskQueue._batches``, no network);
    * ``search fields|full start end``: one search.
    """
    import os

    from bench import peak_rss_mb
    from cubeless.search import SearchOptions, SearchStats, search_items

    stats = SearchStats()
    out: dict[str, Any] = {}
    if mode == "mark":
        from cubeless.models import TaskResult
        from cubeless.state import RunState, list_runs

        spec = _spec(url, store)
        state = RunState(spec.store, list_runs(spec.store)[0])
        body = TaskResult(task_id="x", status="done").model_dump_json().encode()
        done = os.path.join(state.root.removeprefix("file://"), "done")
        os.makedirs(done, exist_ok=True)
        n = 0
        for i, tid in enumerate(state.iter_task_ids()):
            if i % 2 == 0:
                with open(os.path.join(done, tid + ".json"), "wb") as f:
                    f.write(body)
                n += 1
        return {"marked": n}
    t0 = time.perf_counter()
    if mode == "resume":
        from cubeless.aws import TaskQueue
        from cubeless.prepare import prepare_run

        spec = _spec(url, store)
        prepared = prepare_run(spec)
        out["prepare_s"] = time.perf_counter() - t0
        if not prepared.resumed:
            raise RuntimeError("resume: the run was planned again instead of resumed")
        sent = batches = body = 0
        for batch in TaskQueue("http://127.0.0.1:1/q")._batches(prepared.todo):
            batches += 1
            sent += len(batch)
            body += sum(len(e["MessageBody"]) for e in batch)
        if sent != len(prepared.todo):
            raise RuntimeError(f"resume: encoded {sent} of {len(prepared.todo)} pending tasks")
        out.update(pending=sent, already_done=prepared.already_done, batches=batches, body_bytes_per_task=body / max(1, sent))
    elif mode == "plan":
        from cubeless.plan import make_plan, record_for
        from cubeless.state import RunState
        from cubeless.store import ensure_cube

        res = float(args[0]) if args else RESOLUTION
        max_tasks = int(args[1]) if len(args) > 1 else 200_000
        spec = _spec(url, store, resolution=res)
        plan = make_plan(spec, max_tasks=max_tasks, stats=stats)  # the default search, as the planner runs it
        out["plan_s"] = time.perf_counter() - t0
        state = RunState(spec.store, plan.run_id)
        ensure_cube(spec, plan.grid)
        state.write_tasks(plan.tasks)
        state.write_record(record_for(plan, tasks_uri=state.tasks_uri))
        out.update(tasks=len(plan.tasks), items_used=len(plan.items), stages=plan.seconds)
        root = state.root.removeprefix("file://")
        out["task_list_bytes"] = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root) if os.path.isfile(os.path.join(root, f)))
    else:
        fields = args[0] == "fields" if args else True
        spec = _spec(url, store, **({"start": args[1], "end": args[2]} if args else {}))
        items = search_items(spec, options=SearchOptions(use_fields=fields), stats=stats)
        out["items"] = len(items)
    out.update(seconds=time.perf_counter() - t0, peak_mb=peak_rss_mb(),
               pages=stats.pages, items_received=stats.items, items_per_s=stats.items_per_s,
               bytes_per_item=stats.bytes_per_item, halvings=stats.halvings, partitions=stats.partitions,
               fields=stats.fields, search_s=stats.seconds)
    return out


def _run_child(*args: str) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bench.planner", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"bench.planner {args[0]} failed: {r.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def brazil_year(tmp: str, with_10m: bool = True) -> dict[str, Any] | None:
    """The Brazil-year plan (search + assignment + task list) in its own process, its resume path
    (half the tasks done), the search of one month with and without ``fields``, and the same plan
    at 10 m; None when ../shared/real-items is absent."""
    from cubeless.demo.earth_search import real_items_dir, serve_earth_search

    if real_items_dir() is None:
        return None
    with serve_earth_search() as url:
        store = f"{tmp}/brazil-plan.zarr"
        plan = _run_child("plan", url, store)
        _run_child("mark", url, store)
        resume = _run_child("resume", url, store)
        month = {f: _run_child("search", url, f"{tmp}/brazil-s.zarr", f, "2024-03-01", "2024-03-31")
                 for f in ("fields", "full")}
        plan10 = _run_child("plan", url, f"{tmp}/brazil-10m.zarr", str(RESOLUTION_10M), "2000000") if with_10m else None
    return {"plan": plan, "resume": resume, "month": month, "plan10": plan10}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(_child(*sys.argv[1:]), default=str))
