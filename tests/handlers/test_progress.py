"""The progress handler: a run's exact progress from its own markers, the next round's lanes, stalls."""

from __future__ import annotations

import time

import pytest
from aws_helpers import FakeContext, Queues, Run, fake_execute

from cubeless.aws import RunStalled, TaskQueue
from lambdas import progress


def event(run: Run, before: dict | None = None) -> dict:
    return {"run": run.record.model_copy(update={"lanes": 4}).model_dump(mode="json"), "progress": before or {"round": 0}}


def test_progress_counts_this_runs_markers_not_the_queue(deployment_env: Queues, run: Run, context: FakeContext) -> None:
    TaskQueue(deployment_env.url).enqueue(run.tasks)  # messages of the whole run: irrelevant to its progress
    for task in run.tasks[:9]:
        fake_execute(task)
    out = progress.handler(event(run), context)
    assert (out["round"], out["done"], out["dead"], out["remaining"], out["complete"]) == (1, 9, 0, 3, False)
    assert out["lanes"] == [0, 1, 2]  # at most one lane per task left (and at most the run's 4)
    run.state.mark_dead(run.tasks[9].task_id, receive_count=6, final=True)
    run.state.mark_dead(run.tasks[10].task_id, receive_count=6, final=False)  # its last try may be running
    out = progress.handler(event(run, out), context)
    assert (out["round"], out["done"], out["dead"], out["last_tries"], out["remaining"]) == (2, 9, 1, 1, 2)
    fake_execute(run.tasks[10])
    fake_execute(run.tasks[11])
    out = progress.handler(event(run, out), context)
    assert (out["done"], out["dead"], out["remaining"], out["complete"], out["lanes"]) == (11, 1, 0, True, [])


def test_a_last_try_older_than_the_visibility_timeout_is_settled(deployment_env: Queues, run: Run) -> None:
    tid = run.tasks[0].task_id
    run.state.mark_dead(tid, receive_count=6, final=False)
    assert run.state.progress(len(run.tasks), last_try_seconds=180).dead == []
    time.sleep(1.1)
    assert run.state.progress(len(run.tasks), last_try_seconds=1).dead == [tid]  # the try died with its Lambda


def test_rounds_without_progress_fail_the_run(deployment_env: Queues, run: Run, context: FakeContext) -> None:
    fake_execute(run.tasks[0])
    out = progress.handler(event(run), context)
    assert out["stalled"] == 0
    for n in range(1, progress.MAX_STALLED_ROUNDS):
        out = progress.handler(event(run, out), context)
        assert out["stalled"] == n
    with pytest.raises(RunStalled, match=rf"11 of 12 tasks neither done nor dead-lettered after {progress.MAX_STALLED_ROUNDS} rounds"):
        progress.handler(event(run, out), context)
    fake_execute(run.tasks[1])  # any settled task resets the count
    assert progress.handler(event(run, out), context)["stalled"] == 0
