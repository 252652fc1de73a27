"""The commit handler: publishes a finished run; pending -> TasksPending; stuck -> RunIncomplete (one line)."""

from __future__ import annotations

import pytest
from aws_helpers import FakeContext, Queues, Run, fake_execute

from cubeless import store as S
from cubeless.aws import RunIncomplete, TaskQueue, TasksPending
from cubeless.models import TaskResult
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
