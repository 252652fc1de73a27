"""Issue 4, scenario 1: transient faults are retried per policy and the cube comes out
byte-identical to a fault-free run of the same spec.

Each fault is real: a worker process SIGKILLed while it is writing its chunks, an HTTP server
that stalls, a STAC API that answers 429/503 with Retry-After, a COG that 404s twice, a chunk
write that fails in the filesystem.

Formats: 1a (a worker killed while writing) runs on both formats. 1b-1d are zarr only: their
faults strike before a task writes anything (the catalog search, the COG reads), in code both
formats share. 1e is zarr only: it plants an obstacle where a chunk object will go, and Icechunk
names chunk objects afresh on every write (a failed write and its retry in the Icechunk format
are what 1a exercises, with a harsher fault).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from tests.faults.conftest import FORMATS, POLICY, make_spec, store_for
from faultkit import (
    Fault,
    FaultPolicy,
    FileServer,
    StacProxy,
    Throttle,
    assert_identical,
    http_items,
    markers,
    parent_of,
    read_json,
    url_path,
    wait_for,
)

from cubeless import icechunk_store as IC
from cubeless.demo.stac_server import serve_stac
from cubeless.demo.synthetic import SceneSet
from cubeless.hrefs import HrefPolicy
from cubeless.runner import Progress, RunOutcome, RunPolicy, run_local
from cubeless.state import RunState

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults-a")]

#: A task with scenes (and so non-empty chunks) of the ``may`` cube: time index 0, tile (0, 0).
TASK = "2024-05-01.y0.x0"


class Recorder:
    """Progress callback that keeps every attempt's result."""

    def __init__(self) -> None:
        self.results: list[Any] = []

    def __call__(self, p: Progress) -> None:
        if p.last is not None:
            self.results.append(p.last)

    def errors(self, task_id: str | None = None) -> list[str]:
        return [r.error or "" for r in self.results if r.status == "failed" and task_id in (None, r.task_id)]


def _in_thread(fn: Callable[[], RunOutcome]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["outcome"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, box


def _outcome(t: threading.Thread, box: dict[str, Any], timeout: float = 300) -> RunOutcome:
    t.join(timeout)
    assert not t.is_alive(), "the run did not finish"
    if "error" in box:
        raise box["error"]
    return box["outcome"]


def _run_id(store: Path) -> str:
    """The id of the one run planned in ``store``."""
    (run,) = Path(store, "_cubeless", "runs").iterdir()
    return run.name


def _attempts(store: Path, task_id: str) -> int:
    return int(read_json(markers(store, "done")[task_id])["attempts"])


# -- 1a ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_worker_killed_mid_write(tmp_path: Path, stac: str, reference: Callable[[str], Path], fmt: str) -> None:
    """SIGKILL a worker after it wrote part of its task's chunks: the task is retried in a fresh
    process and the cube equals the fault-free one. (Icechunk: the killed attempt's chunk objects
    are in the repository but its change set was never stored, so no commit references them.)"""
    ref = reference("may")
    store = store_for(tmp_path, fmt)
    spec = make_spec(stac, store, "may", format=fmt)
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    base = HrefPolicy.local(spec)
    # The `count` chunk of TASK blocks right before it is written; the band chunks of the same
    # task are written concurrently, so the store holds part of the task when we kill.
    block = ({"block_chunk": os.path.join(os.path.abspath(store), "count/c/0/0/0")} if fmt == "zarr"
             else {"block_key": "count/c/0/0/0"})
    policy = FaultPolicy(
        schemes=base.schemes, hosts=base.hosts, buckets=base.buckets, allow_local=True, fault_dir=str(fault_dir), **block,
    )
    rec = Recorder()
    t, box = _in_thread(lambda: run_local(spec, policy=POLICY, hrefs=policy, progress=rec))

    pid = int(wait_for(lambda: (fault_dir / "blocked.pid").exists() and (fault_dir / "blocked.pid").read_text(),
                       120, "a worker to block in the chunk write"))
    assert parent_of(pid) == os.getpid(), "the blocked process is not one of the runner's workers"
    if fmt == "zarr":
        written = [store / b / "c/0/0/0" for b in spec.bands]
        wait_for(lambda: all(p.is_file() for p in written), 30, "the band chunks of the task")
        assert not (store / "count/c/0/0/0").exists()
    else:
        log = fault_dir / "written.log"
        keys = {f"{pid} {b}/c/0/0/0" for b in spec.bands}
        wait_for(lambda: log.exists() and keys <= set(log.read_text().splitlines()), 30, "the band chunks of the task")
        assert not Path(IC.fork_uri(RunState(str(store), _run_id(store)), TASK)).exists()
    assert TASK not in markers(store, "done")
    os.kill(pid, signal.SIGKILL)

    out = _outcome(t, box)
    assert out.complete, out.manifest
    assert any(e.startswith("WorkerDied") for e in rec.errors(TASK)), rec.errors()
    assert out.pool.retried >= 1
    assert _attempts(store, TASK) == 2
    assert_identical(store, ref)


# -- 1b ---------------------------------------------------------------------------------------------
def _first_scene_scl(items: list[dict[str, Any]]) -> str:
    may = sorted((i for i in items if i["properties"]["datetime"].startswith("2024-05")), key=lambda i: i["id"])
    return url_path(may[0]["assets"]["scl"]["href"])


def test_task_past_timeout_is_killed_and_retried(
    tmp_path: Path, synth: SceneSet, reference: Callable[[str], Path]
) -> None:
    """A COG server stalls on the first request for one file: the attempt overruns its deadline,
    its process is killed, and the retry (same file, now served) completes the cube."""
    ref = reference("may")
    store = tmp_path / "cube.zarr"
    timeout = 20.0
    with FileServer(synth.root) as files:
        items = http_items(synth.items, synth.root, files.url)
        target = _first_scene_scl(items)
        files.faults[target] = Fault(stall=600, times=1)
        with serve_stac(synth.collection, items) as url:
            spec = make_spec(url, store, "may")
            hrefs = HrefPolicy.from_hosts([f"127.0.0.1:{files.port}"], schemes=("http",))
            rec = Recorder()
            t0 = time.monotonic()
            out = run_local(spec, policy=RunPolicy(workers=2, timeout=timeout, retries=5, backoff=0.2),
                            hrefs=hrefs, progress=rec)
            took = time.monotonic() - t0
        statuses = files.requests_for(target)
    assert out.complete, out.manifest
    timeouts = [e for e in rec.errors() if e.startswith("Timeout")]
    assert timeouts, rec.errors()
    assert f"exceeded {timeout:g} s" in timeouts[0]
    assert statuses[0] == 0 and any(s in (200, 206) for s in statuses[1:]), statuses  # 0 = stalled
    assert took >= timeout
    assert_identical(store, ref)


# -- 1c ---------------------------------------------------------------------------------------------
def test_stac_throttling_is_retried_with_retry_after(
    tmp_path: Path, stac: str, reference: Callable[[str], Path]
) -> None:
    """A proxy in front of rustac answers 429/503 + Retry-After: the planner waits as told and retries."""
    ref = reference("may")
    store = tmp_path / "cube.zarr"
    throttles = [
        Throttle(status=503, retry_after="1", times=1, method="GET", path_prefix="/"),  # landing page
        Throttle(status=429, retry_after="1", times=1, path_prefix="/search"),
        Throttle(status=503, retry_after="2", times=1, path_prefix="/search"),
    ]
    with StacProxy(stac, throttles) as proxy:
        out = run_local(make_spec(proxy.url, store, "may"), policy=POLICY)
        log = list(proxy.log)
    assert out.complete, out.manifest
    assert [t.hits for t in throttles] == [1, 1, 1]
    assert log[0][3] == 503 and log[1][3] == 200 and log[1][0] - log[0][0] >= 0.9, log[:2]
    search = [(when, status) for when, _m, path, status in log if path.startswith("/search")]
    assert [s for _, s in search[:3]] == [429, 503, 200], search
    assert search[1][0] - search[0][0] >= 0.9, "Retry-After: 1 was not honoured"
    assert search[2][0] - search[1][0] >= 1.9, "Retry-After: 2 was not honoured"
    assert_identical(store, ref)


# -- 1d ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n404", [1, 2], ids=["404-once", "404-twice"])
def test_cog_404_then_served(
    tmp_path: Path, synth: SceneSet, reference: Callable[[str], Path], n404: int
) -> None:
    """One COG answers 404 to its first GETs. The tasks reading it fail, are retried in a fresh
    worker process, and then read it. (GDAL's /vsicurl/ remembers a 404 for the life of the
    process and answers later opens of the URL from that cache without a request, so a retry in
    the same process fails again, every time: a transient 404 would become a poison task.)"""
    ref = reference("may")
    store = tmp_path / "cube.zarr"
    with FileServer(synth.root) as files:
        items = http_items(synth.items, synth.root, files.url)
        target = _first_scene_scl(items)
        files.faults[target] = Fault(status=404, times=n404)
        with serve_stac(synth.collection, items) as url:
            spec = make_spec(url, store, "may")
            hrefs = HrefPolicy.from_hosts([f"127.0.0.1:{files.port}"], schemes=("http",))
            rec = Recorder()
            # One worker: without a fresh process per retry, every retry would run where the 404 is cached.
            out = run_local(spec, policy=RunPolicy(workers=1, timeout=120.0, retries=5, backoff=0.2),
                            hrefs=hrefs, progress=rec)
        statuses = files.requests_for(target)
    assert out.complete, out.manifest
    assert statuses[:n404] == [404] * n404 and statuses[n404:] and set(statuses[n404:]) <= {200, 206}, statuses
    assert len(rec.errors()) == n404 and all("404" in e for e in rec.errors()), rec.errors()
    assert max(_attempts(store, r.task_id) for r in rec.results if r.status == "failed") >= 2
    assert_identical(store, ref)


# -- 1e ---------------------------------------------------------------------------------------------
def test_chunk_write_fails_once(tmp_path: Path, stac: str, reference: Callable[[str], Path]) -> None:
    """The filesystem refuses one chunk write (a directory sits where the chunk object goes, so the
    atomic rename fails with EISDIR) until a background thread clears it after the first failure."""
    ref = reference("may")
    store = tmp_path / "cube.zarr"
    spec = make_spec(stac, store, "may")
    obstacle = store / "red/c/0/0/0"
    cleared = threading.Event()

    def on_prepared(_p: Any) -> None:
        (obstacle / "in-the-way").mkdir(parents=True)

        def clear() -> None:
            wait_for(lambda: TASK in markers(store, "failed"), 120, "the failed attempt", interval=0.005)
            shutil.rmtree(obstacle)
            cleared.set()

        threading.Thread(target=clear, daemon=True).start()

    rec = Recorder()
    out = run_local(spec, policy=POLICY, progress=rec, on_prepared=on_prepared)
    assert cleared.is_set()
    assert out.complete, out.manifest
    errors = rec.errors(TASK)
    assert errors and all("Is a directory" in e for e in errors), errors
    assert _attempts(store, TASK) == len(errors) + 1
    assert_identical(store, ref)
