"""The planner handler: bad input fails in one line; a plan is enqueued and summarized, never inlined."""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Any

import pytest
from aws_helpers import BUCKET, FakeContext, Queues, Run, StateMachine, spec_doc

from cubeless import fs
from cubeless.aws import ConfigError, TaskQueue
from cubeless.errors import PlanError, SpecError
from cubeless.prepare import Prepared
from cubeless.spec import parse_spec
from cubeless.state import LOCK_KEY, CubeLocked
from lambdas import planner


def test_bad_spec_is_a_one_line_spec_error(context: FakeContext) -> None:
    with pytest.raises(SpecError) as err:
        planner.handler({"name": "vt", "bbox": [-73.4, 42.7, -71.5, 45.0], "start": "2020-01-01"}, context)
    assert str(err.value).startswith("spec field `end` is required; add it")
    assert "\n" not in str(err.value)


def test_store_outside_the_stack_bucket_is_refused(deployment_env: Queues, context: FakeContext) -> None:
    with pytest.raises(SpecError, match=f"not in this stack's bucket; use s3://{BUCKET}/<prefix>.zarr"):
        planner.handler(spec_doc("s3://someone-elses-bucket/vt.zarr"), context)


def fake_prepare(run: Run, *, todo: int | None = None, seen: dict | None = None):  # noqa: ANN201
    def prepare_run(spec: Any, *, lanes: int = 1, lock: Any = None, **kw: Any) -> Prepared:
        if seen is not None:
            seen.update(spec=spec, lanes=lanes)
        if lock is not None:  # as cubeless.prepare.prepare_run does, before it writes anything
            lock.acquire(run.run_id)
        tasks = run.tasks if todo is None else run.tasks[:todo]
        return Prepared(run.record, tasks, len(run.tasks) - len(tasks), False, 0.1)

    return prepare_run


def test_plans_enqueues_and_returns_a_small_record(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run, seen=seen))
    event = {"spec": spec_doc(f"s3://{BUCKET}/hx.zarr"), "lanes": 3}
    out = planner.handler(event, context)
    assert out["progress"] == {"round": 0, "done": 0, "dead": 0, "stalled": 0, "complete": False, "lanes": [0, 1, 2]}
    assert out["run"]["run_id"] == run.run_id and out["run"]["lanes"] == 3
    assert out["run"]["tasks_uri"] == run.state.tasks_uri
    assert parse_spec(out["spec"]) == parse_spec(event["spec"])
    assert len(json.dumps(out)) < 8 * 1024  # a state, not the task list
    assert seen["lanes"] == 3
    queue = TaskQueue(deployment_env.url)
    assert queue.depth().visible == len(run.tasks) == 12
    got = queue.receive()
    assert got is not None and got.task in run.tasks


def test_lanes_default_and_cap(deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run))
    assert planner.handler(spec_doc(f"s3://{BUCKET}/hx.zarr"), context)["progress"]["lanes"] == [0, 1, 2, 3]  # CUBELESS_LANES=4
    assert len(planner.handler({"spec": spec_doc(f"s3://{BUCKET}/hx.zarr"), "lanes": 50}, context)["progress"]["lanes"]) == 8  # max 8
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run, todo=2))
    out = planner.handler({"spec": spec_doc(f"s3://{BUCKET}/hx.zarr"), "lanes": 50}, context)
    assert out["progress"]["lanes"] == [0, 1] and out["progress"]["done"] == 10
    assert out["run"]["lanes"] == 8  # later rounds: at most 8, at most one per task left


def test_resumed_run_with_nothing_left_goes_straight_to_commit(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run, todo=0))
    out = planner.handler(spec_doc(f"s3://{BUCKET}/hx.zarr"), context)
    assert out["progress"]["lanes"] == [] and out["run"]["run_id"] == run.run_id


def test_up_to_date_cube_returns_no_run(deployment_env: Queues, context: FakeContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "prepare_run", lambda spec, **kw: Prepared(None, [], 0, False, 0.0))
    out = planner.handler(spec_doc(f"s3://{BUCKET}/hx.zarr"), context)
    assert out["run"] is None and out["progress"]["lanes"] == []
    assert TaskQueue(deployment_env.url).depth().total == 0


def test_scheduled_input_plans_complete_months_only(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run, seen=seen))
    doc = {**spec_doc(f"s3://{BUCKET}/hx.zarr"), "end": "2099-12-31"}
    planner.handler({"spec": doc, "as_of": "2025-07-03T06:00:00Z"}, context)
    assert seen["spec"].end == date(2025, 6, 30)


def test_a_resumed_run_forgets_the_dead_markers_of_the_tasks_it_queues_again(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run))
    run.state.mark_dead(run.tasks[0].task_id, receive_count=6, final=True, error="RuntimeError: x")
    planner.handler(spec_doc(f"s3://{BUCKET}/hx.zarr"), context)
    assert run.state.dead_ids() == set()  # `cubeless redrive`: the task gets 1 + 5 new tries


# -- one execution per cube: the cube lock -----------------------------------------------------------


def lock_record(store: str) -> dict | None:
    uri = fs.join(store, LOCK_KEY)
    return json.loads(fs.get_bytes(uri)) if fs.exists(uri) else None


def from_state_machine(doc: dict, execution: str, **input: Any) -> dict:
    """The planner's payload from the state machine: the execution input and ``$$.Execution.Id``."""
    return {"input": {"spec": doc, **input} if input else doc, "execution": execution}


def test_the_planner_takes_the_cube_lock_for_its_execution_and_a_second_execution_is_refused(
    deployment_env: Queues, run: Run, context: FakeContext, state_machine: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run))
    store = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}.zarr"
    first, second = state_machine.start(), state_machine.start()
    out = planner.handler(from_state_machine(spec_doc(store), first, lanes=2), context)
    assert out["run"]["run_id"] == run.run_id and out["progress"]["lanes"] == [0, 1]
    held = lock_record(store)
    assert held is not None and (held["run_id"], held["execution"]) == (run.run_id, first)
    queue = TaskQueue(deployment_env.url)
    assert queue.depth().visible == 12

    with pytest.raises(CubeLocked) as err:
        planner.handler(from_state_machine(spec_doc(store), second), context)
    message = str(err.value)
    assert message.startswith(f"a run of this cube is in progress (run id {run.run_id}, started {held['started']}, execution {first});")
    assert "\n" not in message
    assert lock_record(store) == held  # the holder's lock is left alone
    assert queue.depth().visible == 12  # nothing queued by the refused execution

    # A retry of the Plan state in the first execution takes its own lock again.
    again = planner.handler(from_state_machine(spec_doc(store), first, lanes=2), context)
    assert again["run"] == out["run"] and lock_record(store) == held


def test_the_lock_of_a_finished_execution_is_taken_over(
    deployment_env: Queues, run: Run, context: FakeContext, state_machine: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run))
    store = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}.zarr"
    first, second = state_machine.start(), state_machine.start()
    planner.handler(from_state_machine(spec_doc(store), first), context)
    state_machine.stop(first)  # it failed without releasing (an uncaught error, a timeout, stopped)
    planner.handler(from_state_machine(spec_doc(store), second), context)
    held = lock_record(store)
    assert held is not None and (held["run_id"], held["execution"]) == (run.run_id, second)


def test_a_planner_that_fails_after_taking_the_lock_gives_it_up(
    deployment_env: Queues, run: Run, context: FakeContext, state_machine: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def prepare_then_plan_error(spec: Any, *, lock: Any = None, **kw: Any) -> Prepared:
        lock.acquire(run.run_id)  # as prepare_run does, before its first write
        raise PlanError("spec field `crs`: the cube in the store has another grid; use another store")

    monkeypatch.setattr(planner, "prepare_run", prepare_then_plan_error)
    store = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}.zarr"
    with pytest.raises(PlanError):
        planner.handler(from_state_machine(spec_doc(store), state_machine.start()), context)
    assert lock_record(store) is None


def test_an_up_to_date_cube_takes_no_lock_and_a_direct_invocation_plans_without_it(
    deployment_env: Queues, run: Run, context: FakeContext, state_machine: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}.zarr"
    monkeypatch.setattr(planner, "prepare_run", lambda spec, **kw: Prepared(None, [], 0, False, 0.0))
    assert planner.handler(from_state_machine(spec_doc(store), state_machine.start()), context)["run"] is None
    assert lock_record(store) is None
    monkeypatch.setattr(planner, "prepare_run", fake_prepare(run))
    assert planner.handler(spec_doc(store), context)["run"]["run_id"] == run.run_id  # no execution ARN: no lock
    assert lock_record(store) is None
    with pytest.raises(ConfigError, match="not an execution ARN"):
        planner.handler({"input": spec_doc(store), "execution": "run-1"}, context)
