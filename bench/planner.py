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


def _child(mode: str, url: str, store: str, *args: str) -> dict[str, Any]:
    """In a fresh process: ``plan`` (plan + task list written) or ``search`` (search only)."""
    import resource

    from cubeless.search import SearchOptions, SearchStats, search_items
    from cubeless.spec import parse_spec

    doc = {**BRAZIL_YEAR, "stac_api": url, "store": store}
    if mode == "search" and args:
        doc.update(start=args[1], end=args[2])
    spec = parse_spec(doc)
    stats = SearchStats()
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if mode == "plan":
        from cubeless.plan import make_plan
        from cubeless.state import RunState

        plan = make_plan(spec, search=lambda *a, **k: search_items(*a, **k, stats=stats))
        out["plan_s"] = time.perf_counter() - t0
        state = RunState(spec.store, plan.run_id)
        state.write_tasks(plan.tasks)
        out.update(tasks=len(plan.tasks), items_used=len(plan.items), stages=plan.seconds)
        import os

        out["task_list_bytes"] = os.path.getsize(state.tasks_uri.removeprefix("file://"))
    else:
        fields = args[0] == "fields" if args else True
        items = search_items(spec, options=SearchOptions(use_fields=fields), stats=stats)
        out["items"] = len(items)
    out.update(seconds=time.perf_counter() - t0, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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


def brazil_year(tmp: str) -> dict[str, Any] | None:
    """The Brazil-year plan (search + assignment + task list) in its own process, and the search
    of one month with and without ``fields``; None when ../shared/real-items is absent."""
    from cubeless.demo.earth_search import real_items_dir, serve_earth_search

    if real_items_dir() is None:
        return None
    with serve_earth_search() as url:
        plan = _run_child("plan", url, f"{tmp}/brazil-plan.zarr")
        month = {f: _run_child("search", url, f"{tmp}/brazil-s.zarr", f, "2024-03-01", "2024-03-31")
                 for f in ("fields", "full")}
    return {"plan": plan, "month": month}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(_child(*sys.argv[1:]), default=str))
