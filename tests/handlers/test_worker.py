"""The worker handler: many tasks per call until its time is used; a failed task is recorded and
backs off, never raised; the last try writes a dead marker first and dead-letters the message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_helpers import FakeContext, Queues, Run, fake_execute, spec_doc

from cubeless.aws import TaskQueue
from cubeless.spec import parse_spec
from lambdas import worker


class Clock(FakeContext):
    """A Lambda context whose remaining time drops by ``per_call`` seconds each time it is asked."""

    def __init__(self, seconds: float, per_call: float) -> None:
        super().__init__()
        self.left, self.per_call = seconds, per_call

    def get_remaining_time_in_millis(self) -> int:
        now, self.left = self.left, self.left - self.per_call
        return int(now * 1000)


def event(run: Run, calls: int = 0) -> dict[str, Any]:
    return {"run_id": run.run_id, "lane": 0, "calls": calls}


def test_one_call_executes_many_tasks_until_the_queue_is_empty(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def execute(task, *, policy):  # noqa: ANN001, ANN202
        seen.append(policy)
        return fake_execute(task)

    monkeypatch.setattr(worker, "execute_task", execute)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue(run.tasks[:5])
    out = worker.handler(event(run), context)
    assert sorted(out["done"]) == sorted(t.task_id for t in run.tasks[:5])
    assert (out["drained"], out["more"], out["calls"], out["failed"], out["skipped"]) == (True, False, 1, [], [])
    assert (out["run_id"], out["lane"]) == (run.run_id, 0)
    assert run.state.done_ids() == {t.task_id for t in run.tasks[:5]}
    assert queue.depth().total == 0
    # The stack's allowlist reaches execute_task: Earth Search COGs yes, anything else no.
    assert seen[0].allows("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif")
    assert not seen[0].allows("https://example.com/x.tif") and not seen[0].allows("/etc/passwd")


def test_a_call_stops_taking_tasks_when_its_time_is_nearly_used(
    deployment_env: Queues, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "execute_task", fake_execute)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue(run.tasks[:6])
    # 90 s, 20 s per task: 90, 70, 50, 30 are above the 15 s reserve, 10 is not -> 4 tasks.
    out = worker.handler(event(run, calls=3), Clock(90, 20))
    assert len(out["done"]) == 4 and out["drained"] is False and out["more"] is True and out["calls"] == 4
    assert queue.depth().total == 2  # left for the next call
    # The 10th call of a lane returns to the parent even with tasks left.
    last = worker.handler(event(run, calls=9), Clock(90, 20))
    assert last["calls"] == 10 and last["more"] is False and len(last["done"]) == 2


def test_a_failed_task_is_recorded_backs_off_and_the_call_goes_on(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = run.tasks[0].task_id

    def execute(task, *, policy):  # noqa: ANN001, ANN202
        if task.task_id == bad:
            raise RuntimeError("GDAL could not open B04")
        return fake_execute(task)

    monkeypatch.setattr(worker, "execute_task", execute)
    queue = TaskQueue(deployment_env.url)
    queue.enqueue(run.tasks[:3])
    out = worker.handler(event(run), context)  # no exception
    assert out["failed"] == [{"task_id": bad, "error": "RuntimeError: GDAL could not open B04"}]
    assert sorted(out["done"]) == sorted(t.task_id for t in run.tasks[1:3]) and out["drained"] is True
    failure = run.state.failures()[bad]
    assert (failure.status, failure.attempts, failure.error) == ("failed", 1, "RuntimeError: GDAL could not open B04")
    assert queue.depth().in_flight == 1  # not deleted: SQS brings it back after the backoff (10 s), not the 180 s timeout
    assert run.state.dead_ids() == set()  # not its last try


def test_a_streak_of_failures_pauses_the_call_before_each_next_task(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tries 1-3 fail, 4 succeeds, 5-9 fail (a burst of 503s): pauses after the 3rd failure in a row,
    # then doubling, none after a success until 3 failures in a row again.
    tries: list[str] = []
    pauses: list[float] = []

    def execute(task, *, policy):  # noqa: ANN001, ANN202
        tries.append(task.task_id)
        if len(tries) != 4:
            raise OSError("S3 answered 503 Slow Down")
        return fake_execute(task)

    monkeypatch.setattr(worker, "execute_task", execute)
    monkeypatch.setattr(worker, "sleep", pauses.append)
    TaskQueue(deployment_env.url).enqueue(run.tasks[:9])
    out = worker.handler(event(run), context)
    assert len(tries) == 9 and len(out["failed"]) == 8 and len(out["done"]) == 1
    assert pauses == [5.0, 5.0, 10.0, 20.0] and out["paused"] == 40.0  # after tries 3, 7, 8 and 9
    assert out["drained"] is True


def test_a_pause_longer_than_the_time_left_ends_the_call(
    deployment_env: Queues, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []

    def boom(task, *, policy):  # noqa: ANN001, ANN202
        raise OSError("S3 answered 503 Slow Down")

    monkeypatch.setattr(worker, "execute_task", boom)
    monkeypatch.setattr(worker, "sleep", pauses.append)
    TaskQueue(deployment_env.url).enqueue(run.tasks[:6])
    # 40 s left (minus the 15 s reserve; 4 s pass per look at the clock): 3 failures, a 5 s pause
    # (fits), a 4th failure, then 10 s does not fit in what is left: the call ends, more to do.
    out = worker.handler(event(run), Clock(40, 4))
    assert len(out["failed"]) == 4 and pauses == [5.0]
    assert out["drained"] is False and out["more"] is True


def test_the_last_try_writes_a_dead_marker_first_and_dead_letters_on_failure(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = run.tasks[0]
    marker_before_try: list[bool] = []

    def boom(t, *, policy):  # noqa: ANN001, ANN202
        marker_before_try.append(t.task_id in run.state.dead_ids())
        raise RuntimeError("corrupt COG")

    monkeypatch.setattr(worker, "execute_task", boom)
    monkeypatch.setenv("CUBELESS_RETRY_DELAY", "0")  # every failed try is visible again at once
    from lambdas import env

    env.deployment.cache_clear()
    queue = TaskQueue(deployment_env.url)
    queue.enqueue([task])
    out = worker.handler(event(run), context)  # one call: receive counts 1..6, then the queue is empty
    assert [f["task_id"] for f in out["failed"]] == [task.task_id] * 6 and out["drained"] is True
    assert marker_before_try == [False] * 5 + [True]
    marker = run.state.dead_markers()[task.task_id]
    assert (marker.final, marker.receive_count, marker.error) == (True, 6, "RuntimeError: corrupt COG")
    assert run.state.progress(len(run.tasks), last_try_seconds=180).dead == [task.task_id]
    # The worker parked the message in the DLQ itself (same body and attributes, so redrive works).
    assert queue.depth().total == 0
    dlq = TaskQueue(deployment_env.dlq_url)
    got = dlq.receive()
    assert got is not None and got.task == task and got.attributes["run_id"]["StringValue"] == run.run_id


def test_a_successful_last_try_clears_its_dead_marker(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "execute_task", fake_execute)
    task = run.tasks[0]
    run.state.mark_dead(task.task_id, receive_count=6, final=False)
    fake_execute(task)
    assert run.state.dead_ids() == set()
    assert run.state.progress(len(run.tasks), last_try_seconds=180).done == 1


def test_two_cubes_share_the_queue_without_mixing(
    deployment_env: Queues, run: Run, context: FakeContext, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = Run(parse_spec({**spec_doc(str(tmp_path / "other.zarr")), "name": "other", "bbox": [11.0, 46.0, 11.03, 46.02]}))
    monkeypatch.setattr(worker, "execute_task", fake_execute)
    TaskQueue(deployment_env.url).enqueue(run.tasks[:3] + other.tasks[:3])
    assert worker.handler(event(run), context)["drained"] is True
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
    out = worker.handler(event(run), context)
    assert calls == [run.tasks[0].task_id]
    assert (out["done"], out["skipped"]) == ([run.tasks[0].task_id], [run.tasks[0].task_id])
    assert queue.depth().total == 0
    assert len(json.dumps(out)) < 2048
