"""The worker handler: one task per invocation; drained / idle; a failed task is recorded and raised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_helpers import FakeContext, Queues, Run, fake_execute, spec_doc

from cubeless.aws import TaskQueue
from cubeless.spec import parse_spec
from lambdas import worker


def test_executes_one_task_deletes_it_then_reports_drained(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def execute(task, *, policy):  # noqa: ANN001, ANN202
        seen.append(policy)
        return fake_execute(task)

    monkeypatch.setattr(worker, "execute_task", execute)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue(run.tasks[:2])
    outs = [worker.handler({"lane": 0, "run_id": run.run_id}, context) for _ in range(3)]
    assert [o["drained"] for o in outs] == [False, False, True]
    assert outs[2]["idle"] is False
    assert {outs[0]["task_id"], outs[1]["task_id"]} == {t.task_id for t in run.tasks[:2]}
    assert run.state.done_ids() == {t.task_id for t in run.tasks[:2]}
    assert queue.depth().total == 0
    # The stack's allowlist reaches execute_task: Earth Search COGs yes, anything else no.
    assert seen[0].allows("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif")
    assert not seen[0].allows("https://example.com/x.tif") and not seen[0].allows("/etc/passwd")


def test_failed_task_is_recorded_retried_soon_and_raised(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(task, *, policy):  # noqa: ANN001, ANN202
        raise RuntimeError("GDAL could not open B04")

    monkeypatch.setattr(worker, "execute_task", boom)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue(run.tasks[:1])
    with pytest.raises(RuntimeError, match="GDAL could not open B04"):
        worker.handler({}, context)
    failure = run.state.failures()[run.tasks[0].task_id]
    assert (failure.status, failure.attempts, failure.error) == ("failed", 1, "RuntimeError: GDAL could not open B04")
    assert queue.depth().in_flight == 1  # not deleted: SQS brings it back (after 10 s, not the 180 s timeout)
    assert run.state.done_ids() == set()


def test_idle_while_another_lane_holds_a_task(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "execute_task", fake_execute)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue(run.tasks[:1])
    assert queue.receive() is not None  # another lane is working on it
    assert worker.handler({}, context) == {"drained": False, "idle": True}


def test_two_cubes_share_the_queue_without_mixing(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = Run(parse_spec({**spec_doc(str(tmp_path / "other.zarr")), "name": "other", "bbox": [11.0, 46.0, 11.03, 46.02]}))
    monkeypatch.setattr(worker, "execute_task", fake_execute)
    TaskQueue(deployment_env.url).enqueue(run.tasks[:3] + other.tasks[:3])
    while not worker.handler({}, context)["drained"]:
        pass
    assert run.state.done_ids() == {t.task_id for t in run.tasks[:3]}
    assert other.state.done_ids() == {t.task_id for t in other.tasks[:3]}
    assert run.run_id != other.run_id and run.spec.store != other.spec.store


def test_a_duplicate_of_a_done_task_is_deleted_without_work(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def execute(task, *, policy):  # noqa: ANN001, ANN202
        calls.append(task.task_id)
        return fake_execute(task)

    monkeypatch.setattr(worker, "execute_task", execute)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue([run.tasks[0], run.tasks[0]])  # e.g. a resumed run re-queued it
    first, second = worker.handler({}, context), worker.handler({}, context)
    assert calls == [run.tasks[0].task_id]
    assert second == {"drained": False, "idle": False, "task_id": run.tasks[0].task_id, "skipped": True}
    assert "skipped" not in first and queue.depth().total == 0
