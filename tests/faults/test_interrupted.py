"""Issue 4, scenario 4: `cubeless run SPEC --local` killed (SIGKILL, with its workers) after the
plan and about half the tasks; the same command again does only the remaining tasks and the cube
is byte-identical to a clean run. And a run killed inside its commit, after publishing the time
steps but before writing the store's manifest: the same command again repairs the manifest.
Each on both formats (with Icechunk, "publishing" is moving main to the run's snapshot)."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
from pathlib import Path
from typing import Callable

import pytest
from tests.faults.conftest import FORMATS, cli, cli_popen, make_spec, spec_doc, store_for, write_spec
from faultkit import assert_identical, markers, run_and_die_before_store_manifest, wait_for

from cubeless import icechunk_store as IC
from cubeless.commit import read_manifest
from cubeless.state import LOCK_KEY
from cubeless.store import open_cube

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults-b")]

TASKS = 18  # the `full` cube: 6 tiles x 3 months


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_run_resumes_only_what_is_missing(
    tmp_path: Path, stac: str, reference: Callable[[str], Path], env: dict[str, str], fmt: str
) -> None:
    ref = reference("full")
    store = store_for(tmp_path, fmt)
    spec = write_spec(tmp_path / "spec.yaml", spec_doc(stac, store, "full", format=fmt))
    args = ("run", str(spec), "--local", "--workers", "2")

    first = cli_popen(*args, env=env)
    try:
        wait_for(lambda: len(markers(store, "done")) >= TASKS // 2, 300, "half the tasks to be done")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the CLI and its worker processes, at once
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    before = {tid: (p.stat().st_mtime_ns, p.read_bytes()) for tid, p in markers(store, "done").items()}
    k = len(before)
    assert TASKS // 2 <= k < TASKS, f"{k} tasks were done when the run was killed"
    assert read_manifest(str(store)) is None, "an interrupted run must not commit"
    assert (store / LOCK_KEY).exists()  # left behind by the killed run, but not held
    assert open_cube(str(store)).sizes["time"] == 0
    if fmt == "icechunk":  # main holds the repository's initial snapshot and the empty cube, no run
        assert [s.run_id for s in IC.history(str(store))] == [None, None]

    again = cli(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    run_id = next(Path(store, "_cubeless", "runs").iterdir()).name
    assert f"resuming run {run_id}: {TASKS} tasks ({k} already done)" in again.stderr, again.stderr
    assert re.search(rf"done before this invocation\s+│?\s*{k}\b", again.stdout), again.stdout
    assert re.search(rf"tasks planned / done / failed\s+│?\s*{TASKS} / {TASKS} / 0", again.stdout), again.stdout

    after = markers(store, "done")
    assert len(after) == TASKS
    unchanged = [tid for tid, (mtime, body) in before.items()
                 if after[tid].stat().st_mtime_ns == mtime and after[tid].read_bytes() == body]
    assert sorted(unchanged) == sorted(before), "a task done before the kill was run again"
    manifest = read_manifest(str(store))
    assert manifest is not None and manifest.complete and len(manifest.committed_bins) == 3
    if fmt == "icechunk":  # one snapshot for the run, however many invocations it took
        assert len(IC.history(str(store))) == 3 and IC.history(str(store))[0].tags == [run_id]
    assert_identical(store, ref)


@pytest.mark.parametrize("fmt", FORMATS)
def test_killed_between_publish_and_manifest(
    tmp_path: Path, stac: str, reference: Callable[[str], Path], env: dict[str, str], fmt: str
) -> None:
    """The commit publishes (root zarr.json) and then writes the store's manifest; a run killed in
    between leaves a cube whose manifest lags behind it. Running the same command again has
    nothing to compute, but finishes that commit: the manifest describes the cube again."""
    ref = reference("may")
    store = store_for(tmp_path, fmt)
    spec = make_spec(stac, store, "may", format=fmt)
    proc = mp.get_context("spawn").Process(target=run_and_die_before_store_manifest, args=(spec.model_dump_json(),))
    proc.start()
    proc.join(600)
    assert proc.exitcode == -signal.SIGKILL
    assert open_cube(str(store)).sizes["time"] == 1  # published ...
    assert read_manifest(str(store)) is None  # ... but the manifest was never written
    run_id = next(Path(store, "_cubeless", "runs").iterdir()).name
    run_manifest = read_manifest(str(store), run_id)
    assert run_manifest is not None and run_manifest.complete

    path = write_spec(tmp_path / "spec.yaml", spec_doc(stac, store, "may", format=fmt))
    again = cli("run", str(path), "--local", "--workers", "2", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already committed; nothing to do" in again.stderr
    manifest = read_manifest(str(store))
    assert manifest is not None and manifest.complete and manifest.run_id == run_id
    assert [b.start for b in manifest.committed_bins] == [b.start for b in run_manifest.committed_bins]
    shown = cli("manifest", str(store), env=env)
    assert shown.returncode == 0 and f'"run_id": "{run_id}"' in shown.stdout
    assert_identical(store, ref)


@pytest.mark.parametrize("fmt", FORMATS)
def test_ctrl_c_stops_cleanly_and_resumes(
    tmp_path: Path, stac: str, reference: Callable[[str], Path], env: dict[str, str], fmt: str
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it): exit 130 with one
    line saying how to resume, no traceback from any worker; the same command resumes."""
    ref = reference("may")
    store = store_for(tmp_path, fmt)
    spec = write_spec(tmp_path / "spec.yaml", spec_doc(stac, store, "may", format=fmt))
    args = ("run", str(spec), "--local", "--workers", "1")
    first = cli_popen(*args, env=env)
    try:
        # Interrupt as soon as the first task is done: the other 5 (seconds each) leave a wide window,
        # so a loaded machine cannot let the run finish before the signal arrives.
        wait_for(lambda: len(markers(store, "done")) >= 1, 300, "a task to be done")
    finally:
        os.killpg(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 130, f"exit {first.returncode} after {len(markers(store, 'done'))} done tasks: {err[-3000:]}"
    assert "Traceback" not in err + out and "Warning" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted: run the same command again to resume where it stopped"
    k = len(markers(store, "done"))
    assert k < 6, "the run finished before it was interrupted: nothing was tested"

    again = cli(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"6 tasks ({k} already done)" in again.stderr, again.stderr
    assert_identical(store, ref)
