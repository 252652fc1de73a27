"""End to end on emulated AWS: the synthesized state machine on moto, the real handlers, S3 scenes.

See ``aws_harness.py`` for what is real and what is emulated. The cube the pipeline builds, in
either format, must equal the local runner's cube of the same spec exactly (every variable, every
value, the time axis), and its manifest must be complete. The tests at the end pin the product fixes this
end-to-end run exposed.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
import xarray as xr

import aws_harness as H
from cubeless import fs
from cubeless.aws import Deployment, RunRequest
from cubeless.commit import read_manifest
from cubeless.demo.specs import DEMO_UTM_CRS, demo_spec
from cubeless.demo.verify import compare_cube
from cubeless.spec import parse_spec
from cubeless.state import LOCK_KEY, RunState


# One worker for the whole module: the emulator is a module fixture.
pytestmark = [pytest.mark.xdist_group("e2e-aws"), *H.QUIET]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, worker_id: str, scene_set: Any) -> Iterator[H.Stage]:
    template = H.synth_template(H.shared_dir(tmp_path_factory, worker_id))
    with H.Stage(template, scene_set, tmp_path_factory.mktemp("aws-e2e")) as s:
        yield s


@pytest.fixture(scope="module")
def utm_doc(stage: H.Stage) -> dict[str, Any]:
    """The demo cube in UTM 32N at 20 m, 256-pixel chunks, May-July 2024: 18 tasks."""
    return demo_spec(stage.stac_url, stage.store("demo-utm"), crs=DEMO_UTM_CRS)


@pytest.mark.e2e
@pytest.mark.slow
def test_the_pipeline_builds_the_local_runners_cube(stage: H.Stage, utm_doc: dict[str, Any], scene_set: Any) -> None:
    emu = stage.emu
    spec = parse_spec(utm_doc)
    lanes = 2
    run_id = H.run_name(spec)
    mark = emu.dispatcher.mark()
    ex = stage.start(utm_doc, lanes=lanes)
    assert ex.name == run_id  # the execution is named by its run id (a second start joins it)
    result = emu.wait(ex.arn, timeout=240)
    assert result.status == "SUCCEEDED", (result, emu.history_tail(ex.arn), emu.dispatcher.timeline(mark))

    # The execution: one plan, rounds of `lanes` worker lanes executing 18 tasks (each exactly
    # once, several per call), a progress step per round, one commit.
    planned = sorted(t.task_id for t in RunState(spec.store, run_id).iter_tasks())
    assert len(planned) == 18
    assert [i.module for i in emu.dispatcher.calls("planner", mark)] == ["planner"]
    assert sorted(stage.executed(mark)) == planned, emu.dispatcher.timeline(mark)
    assert stage.worker_errors(mark) == []
    calls = [i.result for i in emu.dispatcher.calls("worker", mark)]
    assert all(c["run_id"] == run_id and 1 <= c["calls"] <= 10 and c["lane"] in range(lanes) for c in calls), calls
    assert len(calls) > lanes  # a call takes 1-2 tasks here (the harness's 17 s context): lanes make several calls
    assert not any(c["more"] for c in calls if c["calls"] == 10)  # a lane returns to the parent after 10 calls
    rounds = [i.result for i in emu.dispatcher.calls("progress", mark)]
    assert rounds and rounds[-1]["complete"] is True and rounds[-1]["done"] == 18 and rounds[-1]["dead"] == 0, rounds
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    (commit,) = emu.dispatcher.calls("commit", mark)
    assert result.output["manifest"] == commit.result
    assert commit.result["complete"] is True and commit.result["tasks_done"] == 18
    assert commit.result["bins"] == ["2024-05-01", "2024-06-01", "2024-07-01"]
    assert emu.queue().depth().total == 0 and emu.dead_letter_queue().depth().total == 0

    # The manifest is complete, and the run's own manifest is the one published.
    m = read_manifest(spec.store)
    assert m is not None and m.complete and m.run_id == run_id
    assert (m.tasks_planned, m.tasks_done, m.tasks_failed, m.failures, m.missing) == (18, 18, 0, {}, [])
    assert [b.label for b in m.committed_bins] == [b.label for b in m.run_bins] == ["2024-05-01", "2024-06-01", "2024-07-01"]
    assert m.items_used and all(i in {it["id"] for it in stage.s3_scenes.items} for i in m.items_used)
    assert read_manifest(spec.store, run_id) == m
    # The scenes were read from the emulated S3 by GDAL (bytes over the network, s3:// hrefs).
    results = RunState(spec.store, run_id).done_results(set(planned), sample=None)
    assert sum(r.bytes_read or 0 for r in results) > 0
    assert all(a["href"].startswith(f"s3://{emu.bucket}/{H.SCENES_PREFIX}/") for it in stage.s3_scenes.items for a in it["assets"].values())

    # The cube equals the local runner's exactly: every variable and coordinate, every value, the time axis.
    reference = stage.reference(utm_doc)
    assert H.compare_cubes(spec.store, reference) == []
    times = xr.open_zarr(spec.store).time.values
    assert list(times) == list(xr.open_zarr(reference).time.values) and len(times) == 3
    # ... and the analytic truth of the synthetic scenes (independent of the code under test).
    truth = compare_cube(spec.store, scene_set, spec)
    assert truth.ok, truth.summary()

    # Started again, the run finds every bin committed: plan, "Up to date", nothing written.
    before = {k: emu.s3.head_object(Bucket=emu.bucket, Key=k)["ETag"] for k in emu.keys("cubes/demo-utm.zarr/")}
    mark = emu.dispatcher.mark()
    again = stage.start(utm_doc, lanes=lanes)
    result = emu.wait(again.arn, timeout=60)
    assert result.status == "SUCCEEDED" and result.output["run"] is None, result
    assert [i.module for i in emu.dispatcher.invocations[mark:]] == ["planner"]
    assert {k: emu.s3.head_object(Bucket=emu.bucket, Key=k)["ETag"] for k in emu.keys("cubes/demo-utm.zarr/")} == before


@pytest.mark.e2e
@pytest.mark.slow
def test_one_execution_per_cube_a_second_fails_cube_locked_and_the_next_runs_after(stage: H.Stage) -> None:
    """Two executions of one spec (two names: e.g. the console and ``cubeless start``): the second
    fails in Plan with CubeLocked naming the first, which completes; then the lock is free."""
    emu = stage.emu
    doc = {**demo_spec(stage.stac_url, stage.store("locked"), name="locked"), "end": "2024-05-31"}  # 6 tasks, one bin
    spec = parse_spec(doc)
    lock_uri = fs.join(spec.store, LOCK_KEY)
    first = stage.start(doc, lanes=1)  # one lane: the run lasts a while
    held = H.wait_for(lambda: fs.exists(lock_uri) and json.loads(fs.get_bytes(lock_uri)), timeout=60, what="the first planner's lock")
    assert (held["run_id"], held["execution"]) == (first.name, first.arn)

    mark = emu.dispatcher.mark()
    payload = json.dumps(RunRequest(spec=spec, lanes=1).payload())
    second = emu.sfn.start_execution(stateMachineArn=emu.state_machine_arn, name=f"{first.name}-console", input=payload)["executionArn"]
    refused = emu.wait(second, timeout=60)
    assert (refused.status, refused.error) == ("FAILED", "CubeLocked"), (refused, emu.history_tail(second))
    assert refused.cause == (
        f"a run of this cube is in progress (run id {first.name}, started {held['started']}, execution {first.arn}); "
        f"wait for it to finish or stop it, then run the same command again (it resumes), or write to another `store` (lock: {lock_uri})"
    )
    assert emu.sfn.describe_execution(executionArn=first.arn)["status"] == "RUNNING"
    assert json.loads(fs.get_bytes(lock_uri)) == held  # the refused execution left the lock alone ...
    assert emu.dispatcher.calls("commit", mark) == []  # ... and released nothing (no Release step)

    done = emu.wait(first.arn, timeout=180)
    assert done.status == "SUCCEEDED", (done, emu.history_tail(first.arn), emu.dispatcher.timeline(mark))
    assert done.output["manifest"]["bins"] == ["2024-05-01"] and not fs.exists(lock_uri)  # the commit released it

    # A third execution after it (the cube extended to July) takes the lock, commits and releases it.
    third = stage.start({**doc, "end": "2024-07-31"}, lanes=2)
    assert third.name != first.name
    result = emu.wait(third.arn, timeout=180)
    assert result.status == "SUCCEEDED", (result, emu.history_tail(third.arn))
    assert result.output["manifest"]["committed_bins"] == 3 and not fs.exists(lock_uri)


@pytest.mark.e2e
@pytest.mark.slow
def test_the_pipeline_builds_an_icechunk_cube_as_one_snapshot(stage: H.Stage, utm_doc: dict[str, Any]) -> None:
    """The same state machine, ``format: icechunk`` on S3 (May only: 6 tasks): the workers' forks
    are merged by the commit Lambda into one snapshot on main, tagged with the run id, whose values
    equal the local runner's Zarr cube; no credentials are stored with the forks."""
    import numpy as np

    from cubeless import icechunk_store as IC
    from cubeless.store import open_cube

    emu = stage.emu
    doc = {**utm_doc, "end": "2024-05-31", "store": f"s3://{emu.bucket}/cubes/demo-utm-may.icechunk", "format": "icechunk"}
    spec = parse_spec(doc)
    run_id = H.run_name(spec)
    mark = emu.dispatcher.mark()
    ex = stage.start(doc, lanes=2)
    result = emu.wait(ex.arn, timeout=240)
    assert result.status == "SUCCEEDED", (result, emu.history_tail(ex.arn), emu.dispatcher.timeline(mark))
    assert stage.worker_errors(mark) == []
    planned = sorted(t.task_id for t in RunState(spec.store, run_id).iter_tasks())
    assert len(planned) == 6 and sorted(stage.executed(mark)) == planned

    m = read_manifest(spec.store)
    assert m is not None and m.complete and m.run_id == run_id and m.tasks_done == 6
    hist = IC.history(spec.store)
    assert [h.run_id for h in hist] == [run_id, None, None] and hist[0].tags == [run_id]  # the run, the empty cube, init
    assert m.snapshot == hist[0].id == IC.tip(spec.store)
    assert not [b for b in IC.open_repo(spec.store).list_branches() if b.startswith(IC.RUN_BRANCH_PREFIX)]
    prefix = f"cubes/demo-utm-may.icechunk/_cubeless/runs/{run_id}/"
    forks = [k for k in emu.keys(prefix) if k.endswith((".pickle", ".fork"))]
    assert len(forks) == 6 + 1  # one per task and the run's own
    assert not any(b"testing" in emu.s3.get_object(Bucket=emu.bucket, Key=k)["Body"].read() for k in forks)

    got = open_cube(spec.store, raw=True).load()
    want = open_cube(stage.reference({**doc, "format": "zarr"}), raw=True).load()
    assert set(got.variables) == set(want.variables) and got.sizes == want.sizes
    for name in want.variables:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)

    # Started again: every bin committed, main does not move.
    again = stage.start(doc, lanes=2)
    assert emu.wait(again.arn, timeout=60).output["run"] is None
    assert IC.tip(spec.store) == m.snapshot


# -- fixes the end-to-end run exposed ----------------------------------------------------------------


def test_the_worker_reads_s3_scenes_in_its_own_bucket_only() -> None:
    d = Deployment(bucket="cubes", queue_url="q", spill_uri="s3://cubes/_q", allowed_hosts=("sentinel-cogs.s3.us-west-2.amazonaws.com",))
    policy = d.href_policy()
    assert policy.allows("s3://cubes/scenes/S2A_1/B04.tif")
    assert policy.allows("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif")
    for href in ("s3://other-bucket/B04.tif", "s3://cubes-evil/B04.tif", "https://evil.example.com/B04.tif", "/etc/passwd", "file:///etc/passwd"):
        assert not policy.allows(href), href


def test_the_retry_delay_of_a_failed_task_comes_from_the_environment() -> None:
    from cubeless.aws import ConfigError

    base = {"CUBELESS_BUCKET": "b", "CUBELESS_QUEUE_URL": "q", "CUBELESS_SPILL_URI": "s3://b/_q"}
    assert [Deployment.from_env(base).retry_delay_for(n) for n in range(1, 6)] == [10, 20, 40, 80, 160]  # production
    fast = Deployment.from_env({**base, "CUBELESS_RETRY_DELAY": "0.5"})
    assert [fast.retry_delay_for(n) for n in range(1, 6)] == [0, 1, 2, 4, 8]
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ConfigError, match="CUBELESS_RETRY_DELAY is"):
            Deployment.from_env({**base, "CUBELESS_RETRY_DELAY": bad})


def test_the_last_try_of_a_task_comes_back_at_once_to_be_dead_lettered(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "handlers"))
    from aws_helpers import Run, spec_doc

    from cubeless.aws import Received, TaskQueue
    from cubeless.spec import parse_spec
    from lambdas import worker

    class Sqs:
        def __init__(self) -> None:
            self.visibility: list[int] = []
            self.attribute_reads = 0

        def get_queue_attributes(self, QueueUrl, AttributeNames):  # noqa: ANN001, ANN202, N803
            self.attribute_reads += 1
            return {"Attributes": {"RedrivePolicy": json.dumps({"deadLetterTargetArn": "arn:dlq", "maxReceiveCount": "6"})}}

        def change_message_visibility(self, QueueUrl, ReceiptHandle, VisibilityTimeout):  # noqa: ANN001, ANN202, N803
            self.visibility.append(VisibilityTimeout)

    sqs = Sqs()
    queue = TaskQueue("https://sqs.example/q", sqs=sqs)
    run = Run(parse_spec(spec_doc(str(tmp_path / "hx.zarr"))))
    monkeypatch.setattr(worker, "queue", lambda: queue)
    monkeypatch.setattr(worker, "dead_letter_queue", lambda: None)  # no DLQ URL: SQS parks it on the next receive
    monkeypatch.setattr(worker, "deployment", lambda: Deployment(bucket="b", queue_url=queue.url, spill_uri="s3://b/_q"))
    tid = run.tasks[0].task_id
    for n in range(1, 7):
        assert worker.record_failure(Received(run.tasks[0], f"r{n}", n, "m"), RuntimeError("corrupt COG"), 0.1) == "RuntimeError: corrupt COG"
        assert (tid in run.state.dead_ids()) == (n == 6)  # only the last failed try settles the task
    assert sqs.visibility == [10, 20, 40, 80, 160, 0]  # the 6th (last) try: no 320 s wait before the DLQ
    assert sqs.attribute_reads == 1
    assert run.state.failures()[tid].attempts == 6
    assert run.state.dead_markers()[tid].final is True
    assert TaskQueue("https://sqs.example/q", sqs=type("NoDlq", (), {"get_queue_attributes": lambda *a, **k: {"Attributes": {}}})()).max_receives() is None


def test_a_failed_try_drops_gdals_network_cache(tmp_path) -> None:  # noqa: ANN001
    """GDAL caches /vsicurl/ (and /vsis3/) objects process-wide: without the worker's
    ``forget_network_cache`` a warm container keeps failing on an object that was fixed."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np
    import rasterio
    from rasterio.errors import RasterioIOError

    from cubeless.demo.synthetic import write_cog
    from lambdas import worker

    served = tmp_path / "www"
    served.mkdir()
    write_cog(tmp_path / "good.tif", np.full((64, 64), 7, np.uint16), crs="EPSG:32632", transform=(10.0, 0, 500000.0, 0, -10.0, 5000000.0))
    good = (tmp_path / "good.tif").read_bytes()
    (served / "scene.tif").write_bytes(b"this is not a GeoTIFF\n" * (len(good) // 22 + 1))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"/vsicurl/http://127.0.0.1:{server.server_address[1]}/scene.tif"
    try:
        with rasterio.Env(CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            with pytest.raises(RasterioIOError):
                rasterio.open(url)
            (served / "scene.tif").write_bytes(good)  # the object is fixed
            with pytest.raises(RasterioIOError):
                rasterio.open(url)  # ... but this process still sees the cached bytes
            worker.forget_network_cache()
            with rasterio.open(url) as src:
                assert int(src.read(1).max()) == 7
    finally:
        server.shutdown()
        server.server_close()
