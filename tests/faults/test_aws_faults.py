"""Faults on emulated AWS (issue 4, AWS half): the synthesized state machine on moto, the real
handlers, scenes in S3 (see ``tests/e2e/aws_harness.py``).

| scenario | injection | expected |
|---|---|---|
| poison task | one scene's COG overwritten with garbage in S3 (one task reads it) | tried 1 + 5 times (no worker call fails), then parked in the DLQ by the worker; the execution fails with RunIncomplete naming how many tasks are missing, the dead-lettered task, where their list is and the redrive command; the run's manifest is incomplete and names the task and its last error; nothing committed; the cube lock is released on the way; once the object is fixed, `cubeless redrive RUN` redoes only that task and the cube equals the reference |
| interrupted run | StopExecution after about half the tasks | a new start takes over the stopped execution's cube lock, resumes and executes only the remaining tasks (their leftover messages are skipped as duplicates); cube equals the reference |
| concurrent cubes | two cubes started at once on one bucket and queue; one of them started twice at once | both finish and equal their references, every task runs once; the double start is one execution |
| bad input | inverted bbox, unknown fields, store outside the bucket, catalog not allowed | FAILED with SpecError and a one-line cause naming the field; nothing written to the bucket, nothing queued |

Time is compressed in the harness: the worker's first retry delay is 1 s (``CUBELESS_RETRY_DELAY``;
10 s in production), Wait states last 1 s, and retry intervals are a tenth of the deployed ones.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import aws_harness as H  # noqa: E402

from cubeless import fs  # noqa: E402
from cubeless.commit import read_manifest  # noqa: E402
from cubeless.demo.specs import DEMO_UTM_CRS, demo_spec  # noqa: E402
from cubeless.models import Task  # noqa: E402
from cubeless.spec import parse_spec  # noqa: E402
from cubeless.state import LOCK_KEY, RunState  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("faults-aws"), *H.QUIET]

#: A May 2024 scene of the western UTM tile: with 512-pixel chunks only tile x0 of the demo grid sees it.
POISON_SCENE = "S2A_31TZZ_20240502_0_L2A"
POISON_KEY = f"{H.SCENES_PREFIX}/data/{POISON_SCENE}/red.tif"


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, worker_id: str, synth: Any) -> Iterator[H.Stage]:
    template = H.synth_template(H.shared_dir(tmp_path_factory, worker_id))
    with H.Stage(template, synth, tmp_path_factory.mktemp("aws-faults")) as s:
        yield s


def doc_of(stage: H.Stage, name: str, **override: Any) -> dict[str, Any]:
    """The faults cube: the demo grid (EPSG:4326) in 512-pixel chunks (2 tiles), May-July (6 tasks)."""
    doc = demo_spec(stage.stac_url, stage.store(name), name="aws-faults", chunk=512)
    doc.update(override)
    return doc


def in_format(doc: dict[str, Any], fmt: str) -> dict[str, Any]:
    """``doc`` in ``fmt``: an Icechunk repository at ``<name>.icechunk`` in the bucket."""
    if fmt == "zarr":
        return doc
    return {**doc, "format": fmt, "store": doc["store"].removesuffix(".zarr") + ".icechunk"}


def cube_problems(stage: H.Stage, doc: dict[str, Any]) -> list[str]:
    """Differences from the local runner's Zarr cube of the same spec; an Icechunk cube is compared
    by what a reader of main sees (faultkit.assert_same_cube: arrays, metadata, values, the run's
    one tagged snapshot, no run branch left)."""
    reference = stage.reference({k: v for k, v in doc.items() if k != "format"})
    if doc.get("format") != "icechunk":
        return H.compare_cubes(doc["store"], reference)
    from faultkit import assert_same_cube

    try:
        assert_same_cube(doc["store"], reference)
    except AssertionError as err:
        return [str(err)]
    return []


def tasks_of(doc: dict[str, Any], run_id: str) -> list[Task]:
    return list(RunState(doc["store"], run_id).iter_tasks())


@pytest.mark.parametrize("fmt", ["zarr", "icechunk"])
def test_poison_task_goes_to_the_dlq_then_redrive_redoes_only_it(stage: H.Stage, tmp_path: Path, fmt: str) -> None:
    emu = stage.emu
    doc = in_format(doc_of(stage, "poison"), fmt)
    spec_file = tmp_path / "poison.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    good = emu.get(POISON_KEY)
    emu.put(POISON_KEY, b"this is not a GeoTIFF\n" * 64)
    # The emulated workers run in this process: GDAL's network cache may still hold the good bytes
    # an earlier test read from this key (a new Lambda container starts without them).
    from lambdas.worker import forget_network_cache

    forget_network_cache()
    try:
        mark = emu.dispatcher.mark()
        run_id = H.run_name(parse_spec(doc))
        started = emu.cli("start", str(spec_file), "--lanes", "2")
        assert started.returncode == 0 and run_id in started.stdout, started.stdout + started.stderr
        done = emu.wait(stage.emu.pipeline().execution_arn(run_id), timeout=180)
        tasks = tasks_of(doc, run_id)
        poisoned = [t.task_id for t in tasks if any(i["id"] == POISON_SCENE for i in t.items)]
        assert len(tasks) == 6 and len(poisoned) == 1, (len(tasks), poisoned)
        (poison,) = poisoned

        # The execution fails with the commit's one-line cause: how many, and where their list is.
        run_manifest = RunState(doc["store"], run_id).manifest_uri
        assert (done.status, done.error) == ("FAILED", "RunIncomplete"), (done, emu.history_tail(done.arn))
        assert done.cause and "\n" not in done.cause
        assert done.cause.startswith(
            f"run {run_id}: 1 of 6 tasks missing (1 failed); their list is in {run_manifest} (`missing`, `failures`); dead-lettered: {poison}; "
        )
        assert f"cubeless redrive {run_id}" in done.cause
        # Tried 1 + 5 times (6 receives), every try failing on the corrupt COG; then parked in the DLQ.
        errors = stage.worker_errors(mark)
        assert len(errors) == 6 and all(e.startswith(poison) and POISON_SCENE in e for e in errors), errors
        assert stage.worker_calls_raised(mark) == []  # a failed task never fails the worker call (or its lane)
        assert sorted(stage.executed(mark)) == sorted(t.task_id for t in tasks if t.task_id != poison)
        parked = emu.peek(emu.dlq_url)
        assert [m["MessageAttributes"]["task_id"]["StringValue"] for m in parked] == [poison]
        assert [m["MessageAttributes"]["run_id"]["StringValue"] for m in parked] == [run_id]
        assert emu.queue().depth().total == 0
        # The run's manifest is not complete and names the task and its last error; nothing is committed.
        m = read_manifest(doc["store"], run_id)
        assert m is not None and not m.complete and (m.tasks_planned, m.tasks_done, m.tasks_failed) == (6, 5, 1)
        assert list(m.failures) == [poison] and POISON_SCENE in m.failures[poison] and m.missing == []
        assert RunState(doc["store"], run_id).failures()[poison].attempts == emu.max_receive_count == 6
        assert read_manifest(doc["store"]) is None
        if fmt == "icechunk":  # main holds no snapshot of the run: its work waits on the run's branch
            from cubeless import icechunk_store as IC

            assert run_id not in [h.run_id for h in IC.history(doc["store"])]
        # The failure path released the cube lock before failing (the commit raised, then Release).
        assert [i.event.get("action") for i in emu.dispatcher.calls("commit", mark)] == [None, "release"]
        assert not fs.exists(fs.join(doc["store"], LOCK_KEY))
        status = emu.cli("status", run_id)
        assert status.returncode == 1 and "FAILED" in status.stdout and "1 of 6 tasks missing" in status.stdout, status.stdout
    finally:
        emu.put(POISON_KEY, good)

    # Fixed: `cubeless redrive` clears the run's dead-lettered message and starts the run again,
    # which re-queues only the task without a done marker.
    mark = emu.dispatcher.mark()
    redriven = emu.cli("redrive", run_id)
    assert redriven.returncode == 0 and "cleared 1 dead-lettered task message" in redriven.stdout, redriven.stdout + redriven.stderr
    again = emu.wait(emu.pipeline().execution_arn(f"{run_id}-r2"), timeout=120)  # the failed name stays taken
    assert again.status == "SUCCEEDED", (again, emu.history_tail(again.arn))
    assert stage.executed(mark) == [poison]  # only that task was redone, once
    assert stage.worker_errors(mark) == []
    assert emu.queue().depth().total == 0 and emu.dead_letter_queue().depth().total == 0
    m = read_manifest(doc["store"])
    assert m is not None and m.complete and (m.tasks_done, m.tasks_failed, m.failures) == (6, 0, {})
    assert cube_problems(stage, doc) == []


@pytest.mark.parametrize("fmt", ["zarr", "icechunk"])
def test_interrupted_run_resumes_with_only_the_remaining_tasks(stage: H.Stage, fmt: str) -> None:
    emu = stage.emu
    doc = in_format(doc_of(stage, "interrupted"), fmt)
    # One task per worker call: the call in flight when the execution stops adds at most one task
    # (a call of the usual ~2 s could finish all six on a fast machine, and nothing would be left).
    with emu.worker_call_seconds(15.3):
        first = stage.start(doc, lanes=1)
        state = RunState(doc["store"], first.name)
        H.wait_for(lambda: len(state.done_ids()) >= 2 if state.exists() else False, timeout=120, what="a third of the tasks done")
        emu.sfn.stop_execution(executionArn=first.arn, error="Interrupted", cause="test: stop after about a third of the tasks")
        stopped = emu.wait(first.arn, timeout=30)
        assert stopped.status == "ABORTED"
        stage.wait_quiet()  # a worker invocation in flight finishes (Lambda is not stopped with the execution)
    mark = emu.dispatcher.mark()
    H.sleep(3)  # the stopped execution's lane invokes nothing more
    assert emu.dispatcher.calls("worker", mark) == []
    done_before = state.done_ids()
    planned = {t.task_id for t in tasks_of(doc, first.name)}
    assert 2 <= len(done_before) < len(planned) == 6, done_before
    assert read_manifest(doc["store"]) is None  # nothing committed
    lock_uri = fs.join(doc["store"], LOCK_KEY)
    assert json.loads(fs.get_bytes(lock_uri))["execution"] == first.arn  # stopped: no step ran to release it

    left = emu.queue().depth().total  # the stopped run's messages stay queued
    # One lane, so that a task's leftover message and its re-queued copy are never taken at once
    # (two lanes may both run such a pair: at-least-once, the same bytes twice).
    second = stage.start(doc, lanes=1)
    assert second.name == f"{first.name}-r2"
    finished = emu.wait(second.arn, timeout=120)
    assert finished.status == "SUCCEEDED", (finished, emu.history_tail(second.arn), emu.dispatcher.timeline(mark))
    executed = stage.executed(mark)
    assert sorted(executed) == sorted(planned - done_before), (executed, done_before)  # each remaining task, once
    skipped = stage.skipped(mark)
    assert len(skipped) == left and set(skipped) <= planned - done_before  # the duplicates cost a HEAD each
    assert emu.queue().depth().total == 0
    m = read_manifest(doc["store"])
    assert m is not None and m.complete and m.tasks_done == 6
    assert not fs.exists(lock_uri)  # taken over (its execution was ABORTED), then released by the commit
    assert cube_problems(stage, doc) == []


def test_concurrent_cubes_finish_and_a_double_start_is_one_execution(stage: H.Stage) -> None:
    emu = stage.emu
    a = doc_of(stage, "concurrent-a")
    b = demo_spec(stage.stac_url, stage.store("concurrent-b"), crs=DEMO_UTM_CRS, name="aws-faults-utm")
    b["end"] = "2024-05-31"
    mark = emu.dispatcher.mark()
    starts: dict[str, Any] = {}
    barrier = threading.Barrier(3)

    def start(key: str, doc: dict[str, Any]) -> None:
        barrier.wait()
        starts[key] = stage.start(doc, lanes=2)

    threads = [threading.Thread(target=start, args=args) for args in (("a1", a), ("a2", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(starts) == {"a1", "a2", "b"}
    assert starts["a1"].arn == starts["a2"].arn  # the same cube started twice at once: one execution
    names = [e["name"] for e in emu.sfn.list_executions(stateMachineArn=emu.state_machine_arn)["executions"]]
    assert names.count(starts["a1"].name) == 1 and not any(n.startswith(starts["a1"].name + "-r") for n in names)
    for key in ("a1", "b"):
        result = emu.wait(starts[key].arn, timeout=180)
        assert result.status == "SUCCEEDED", (key, result, emu.history_tail(starts[key].arn))
    # Every task of both runs ran exactly once (lanes of either run take tasks of both: one queue).
    planned: Counter[str] = Counter()
    for doc, run in ((a, starts["a1"]), (b, starts["b"])):
        ids = [t.task_id for t in tasks_of(doc, run.name)]
        planned.update(ids)
        assert RunState(doc["store"], run.name).done_ids() == set(ids)
        m = read_manifest(doc["store"])
        assert m is not None and m.complete and m.run_id == run.name and m.tasks_done == len(ids) == 6
        assert cube_problems(stage, doc) == []
    assert Counter(stage.executed(mark)) == planned and stage.worker_errors(mark) == []
    assert len(emu.dispatcher.calls("planner", mark)) == 2 and len(emu.dispatcher.calls("commit", mark)) == 2
    assert emu.queue().depth().total == 0 and emu.dead_letter_queue().depth().total == 0


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("inverted-bbox", "bbox"),
        ("unknown-spec-field", "colour"),
        ("unknown-input-field", "lanse"),
        ("store-outside-the-bucket", "store"),
        ("catalog-not-allowed", "stac_api"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(stage: H.Stage, case: str, field: str) -> None:
    emu = stage.emu
    doc = doc_of(stage, f"bad-{case}")
    payload: dict[str, Any] = {"spec": doc, "lanes": 2}
    if case == "inverted-bbox":
        w, s, e, n = doc["bbox"]
        doc["bbox"] = [e, n, w, s]
    elif case == "unknown-spec-field":
        doc["colour"] = "red"
    elif case == "unknown-input-field":
        payload["lanse"] = 2
    elif case == "store-outside-the-bucket":
        doc["store"] = "s3://someone-elses-bucket/x.zarr"
    elif case == "catalog-not-allowed":
        doc["stac_api"] = "https://stac.example.com/v1"
    before = emu.keys()
    mark = emu.dispatcher.mark()
    arn = emu.sfn.start_execution(stateMachineArn=emu.state_machine_arn, name=f"bad-{case}", input=json.dumps(payload))["executionArn"]
    result = emu.wait(arn, timeout=60)
    assert (result.status, result.error) == ("FAILED", "SpecError"), (result, emu.history_tail(arn))
    assert result.cause and "\n" not in result.cause and f"`{field}`" in result.cause, result.cause
    assert len(result.cause) < 400
    assert [i.module for i in emu.dispatcher.calls("planner", mark)] == ["planner"]
    assert emu.dispatcher.calls("worker", mark) == [] and emu.dispatcher.calls("commit", mark) == []
    assert emu.keys() == before  # nothing written to the bucket
    assert emu.queue().depth().total == 0
