"""Issue 4, scenario 2: duplicate delivery. Every task of a run is executed twice at the same
time, by two processes calling :func:`cubeless.execute.execute_task` on the same Task (a barrier
releases both together), as SQS may deliver a message twice. The committed cube is byte-identical
to a fault-free run. On both formats: with Icechunk each twin writes its own chunk objects and
stores its change set at the same key (the last one stays); either references the same values."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Callable

import pytest
from tests.faults.conftest import FORMATS, make_spec, store_for
from faultkit import assert_identical, execute_in_lockstep, markers

from cubeless import icechunk_store as IC

from cubeless.commit import commit_run
from cubeless.hrefs import HrefPolicy
from cubeless.prepare import prepare_run
from cubeless.state import RunState

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults-a")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_task_twice_at_once(tmp_path: Path, stac: str, reference: Callable[[str], Path], fmt: str) -> None:
    ref = reference("may")
    store = store_for(tmp_path, fmt)
    spec = make_spec(stac, store, "may", format=fmt)
    prepared = prepare_run(spec)
    assert prepared.record is not None and len(prepared.todo) == 6
    bodies = [t.model_dump_json() for t in prepared.todo]

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=execute_in_lockstep, args=(bodies, barrier, HrefPolicy.local(spec), results))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in range(2 * len(bodies))]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]

    by_task: dict[str, list[tuple[int, int]]] = {}
    for pid, tid, chunks in got:
        by_task.setdefault(tid, []).append((pid, chunks))
    assert len(by_task) == 6
    for tid, runs in by_task.items():
        assert len({pid for pid, _ in runs}) == 2, f"{tid} was not executed by both processes"
        assert runs[0][1] == runs[1][1], f"{tid}: the twins wrote different chunk counts {runs}"

    assert set(markers(store, "done")) == set(by_task)
    if fmt == "icechunk":
        state = RunState(str(store), prepared.record.run_id)
        assert all(Path(IC.fork_uri(state, tid)).is_file() for tid in by_task)
    manifest = commit_run(str(store), prepared.record.run_id)
    assert manifest.complete
    assert_identical(store, ref)
