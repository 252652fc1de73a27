"""The commit handler: publishes a finished run and releases its cube lock; pending -> TasksPending;
stuck -> RunIncomplete (one line); the failure paths' release step removes only its own execution's lock."""

from __future__ import annotations

import json
import uuid

import pytest
from aws_helpers import BUCKET, FakeContext, Queues, Run, StateMachine, fake_execute, spec_doc

from cubeless import fs
from cubeless import store as S
from cubeless.aws import Deployment, RunIncomplete, TaskQueue, TasksPending
from cubeless.models import TaskResult
from cubeless.spec import parse_spec
from cubeless.state import LOCK_KEY, CubeLocked
from lambdas import commit


def test_complete_run_is_committed(deployment_env: Queues, run: Run, context: FakeContext) -> None:
    for task in run.tasks:
        fake_execute(task)
    out = commit.handler(run.commit_event(), context)
    assert out["complete"] is True and out["run_id"] == run.run_id
    assert out["bins"] == ["2020-01-01", "2020-02-01"] and out["tasks_done"] == 12
    assert out["manifest"].endswith("/_cubeless/manifest.json")
    assert [b.label for b in S.committed_bins(run.spec.store)] == ["2020-01-01", "2020-02-01"]
    assert commit.handler(run.commit_event(), context)["complete"] is True  # again: harmless


def test_tasks_neither_done_nor_dead_refuse_the_commit(deployment_env: Queues, run: Run, context: FakeContext) -> None:
    for task in run.tasks[1:]:
        fake_execute(task)
    TaskQueue(deployment_env.url).enqueue(run.tasks[:1])
    with pytest.raises(TasksPending, match=r"1 of 12 tasks neither done nor dead-lettered yet") as err:
        commit.handler(run.commit_event(), context)
    assert "\n" not in str(err.value)
    assert S.committed_bins(run.spec.store) == []


def test_dead_lettered_tasks_fail_the_run_naming_them(deployment_env: Queues, run: Run, context: FakeContext) -> None:
    for task in run.tasks[2:]:
        fake_execute(task)
    for task in run.tasks[:2]:
        run.state.mark_failed(TaskResult(task_id=task.task_id, status="failed", attempts=6, error="RuntimeError: x"))
        run.state.mark_dead(task.task_id, receive_count=6, final=True, error="RuntimeError: x")
    with pytest.raises(RunIncomplete) as err:
        commit.handler(run.commit_event(), context)
    message = str(err.value)
    assert "\n" not in message
    assert f"run {run.run_id}: 2 of 12 tasks missing (2 failed)" in message
    assert f"their list is in {run.state.manifest_uri}" in message
    assert f"dead-lettered: {', '.join(sorted(t.task_id for t in run.tasks[:2]))};" in message
    assert f"`cubeless redrive {run.run_id}`" in message
    assert S.committed_bins(run.spec.store) == []


# -- the cube lock: released by the commit, and by the failure paths' release step -------------------


def lock_record(store: str) -> dict | None:
    uri = fs.join(store, LOCK_KEY)
    return json.loads(fs.get_bytes(uri)) if fs.exists(uri) else None


@pytest.fixture
def s3_run(queues: Queues) -> Run:
    """A planned run of a cube on (emulated) S3, where an execution's lock lives."""
    return Run(parse_spec(spec_doc(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}.zarr")))


def test_the_commit_releases_its_executions_lock(
    deployment_env: Queues, s3_run: Run, context: FakeContext, state_machine: StateMachine
) -> None:
    execution = state_machine.start()
    lock = Deployment.from_env().cube_lock(s3_run.spec.store, execution).acquire(s3_run.run_id)  # the planner's
    for task in s3_run.tasks:
        fake_execute(task)
    out = commit.handler({**s3_run.commit_event(), "execution": execution}, context)
    assert out["complete"] is True and lock_record(s3_run.spec.store) is None
    assert lock.record is not None  # released by the commit's invocation, not by the object that took it
    Deployment.from_env().cube_lock(s3_run.spec.store, state_machine.start()).acquire("cube-next00000000").release()


def test_a_run_that_fails_keeps_the_lock_until_the_release_step(
    deployment_env: Queues, s3_run: Run, context: FakeContext, state_machine: StateMachine
) -> None:
    execution = state_machine.start()
    Deployment.from_env().cube_lock(s3_run.spec.store, execution).acquire(s3_run.run_id)
    held = lock_record(s3_run.spec.store)
    for task in s3_run.tasks[1:]:
        fake_execute(task)
    TaskQueue(deployment_env.url).enqueue(s3_run.tasks[:1])
    with pytest.raises(TasksPending):
        commit.handler({**s3_run.commit_event(), "execution": execution}, context)
    assert lock_record(s3_run.spec.store) == held
    release = {"action": "release", "run": s3_run.commit_event()["run"], "execution": execution}
    assert commit.handler(release, context) == {"run_id": s3_run.run_id, "released": True}
    assert lock_record(s3_run.spec.store) is None
    assert commit.handler(release, context)["released"] is False  # the step retried: harmless


def test_the_release_step_leaves_another_executions_lock_alone(
    deployment_env: Queues, s3_run: Run, context: FakeContext, state_machine: StateMachine
) -> None:
    ours, theirs = state_machine.start(), state_machine.start()
    Deployment.from_env().cube_lock(s3_run.spec.store, ours).acquire(s3_run.run_id)
    state_machine.stop(ours)  # e.g. it timed out; a newer execution took the lock over
    Deployment.from_env().cube_lock(s3_run.spec.store, theirs).acquire(s3_run.run_id)
    held = lock_record(s3_run.spec.store)
    assert held is not None and held["execution"] == theirs
    release = {"action": "release", "run": s3_run.commit_event()["run"], "execution": ours}
    assert commit.handler(release, context)["released"] is False
    assert lock_record(s3_run.spec.store) == held
    # ... and the old execution's commit (redriven) is refused instead of racing the new one.
    for task in s3_run.tasks:
        fake_execute(task)
    with pytest.raises(CubeLocked, match=theirs):
        commit.handler({**s3_run.commit_event(), "execution": ours}, context)
    assert S.committed_bins(s3_run.spec.store) == [] and lock_record(s3_run.spec.store) == held
