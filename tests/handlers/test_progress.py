"""The progress handler: a run's exact progress from its own markers, the next round's lanes, stalls."""

from __future__ import annotations

import time

import pytest
from aws_helpers import BUCKET, FakeContext, Queues, Run, fake_execute

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


def test_a_large_runs_done_markers_are_listed_by_task_id_stem_on_s3(queues: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    # Above LIST_SPLIT_ABOVE tasks, done/ is listed as ten listings per bin (stems `<bin>.y<d>`),
    # concurrently; the ids are the same as one listing's, each once.
    from datetime import date, datetime, timezone

    from cubeless import fs
    from cubeless import state as state_mod
    from cubeless.models import RunRecord, TaskResult, task_id_stems
    from cubeless.state import RunState
    from cubeless.timebins import TimeBin

    bins = [TimeBin(start=date(2024, m, 1), end=date(2024, m + 1, 1)) for m in (1, 2)]
    rows = [0, 1, 9, 10, 19, 100, 105, 999]
    ids = {f"{b.label}.y{iy}.x{ix}" for b in bins for iy in rows for ix in (0, 7, 12)}
    assert all(sum(i.startswith(s) for s in task_id_stems(bins)) == 1 for i in ids)  # a partition of the ids
    st = RunState(f"s3://{BUCKET}/stems/cube.zarr", "cube-stems")
    st.write_record(RunRecord(run_id=st.run_id, cube="c", store=st.store, bins=bins, task_count=len(ids), tiles_total=1,
                              tiles_on_land=1, items_found=0, tasks_uri=st.tasks_uri, created=datetime.now(timezone.utc)))
    for i in sorted(ids):
        st.mark_done(TaskResult(task_id=i, status="done"))
    fs.put_bytes(fs.join(st.root, "done", "notes.txt"), b"not a marker")
    calls: list[int] = []
    real = fs.list_names_by_stems
    monkeypatch.setattr(fs, "list_names_by_stems", lambda url, stems, **kw: calls.append(len(stems)) or real(url, stems, **kw))
    monkeypatch.setattr(state_mod, "LIST_SPLIT_ABOVE", 10)
    assert st.done_ids() == ids and calls == [20]
    assert sorted(real(fs.join(st.root, "done"), task_id_stems(bins))) == sorted(f"{i}.json" for i in ids)
    monkeypatch.setattr(state_mod, "LIST_SPLIT_ABOVE", 10_000)  # a small run: one listing, the same ids
    assert st.done_ids() == ids and calls == [20]
