"""Issue 4, scenario 3: a poison task (one scene's COG is garbage) is tried 1 + 5 times, the run
ends incomplete (exit 1) without publishing anything, the manifest names the failed tasks and
their last error; once the COG is fixed, the same command completes and redoes only those tasks.

The cube already holds May (a copy of a clean run's cube), so "nothing published" is visible to readers as
an unchanged time axis of length 1, not just an empty cube. On both formats; with Icechunk
"nothing published" is also main's tip unchanged (the run's work waits on its branch), and the
redone run is one snapshot on top of May's.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Callable

import pytest
from tests.faults.conftest import FORMATS, cli, spec_doc, store_for, write_spec
from faultkit import assert_identical, markers, read_json

from cubeless import icechunk_store as IC
from cubeless.commit import read_manifest
from cubeless.demo.stac_server import serve_stac
from cubeless.demo.synthetic import SceneSet
from cubeless.state import RunState
from cubeless.store import open_cube

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults-b")]

POISONED = "S2A_31TZZ_20240702_0_L2A"  # a July scene of the western tile


@pytest.mark.parametrize("fmt", FORMATS)
def test_poison_task_fails_alone_and_is_redone_after_the_fix(
    tmp_path: Path, synth: SceneSet, stac: str, reference: Callable[[str], Path], env: dict[str, str], fmt: str
) -> None:
    ref = reference("full")
    store = store_for(tmp_path, fmt)
    shutil.copytree(reference("may", fmt), store)  # a cube holding May, committed by a clean run
    assert read_manifest(str(store)) is not None and open_cube(str(store)).sizes["time"] == 1
    may_tip = IC.tip(str(store)) if fmt == "icechunk" else None

    # The catalog now points one asset at a file of garbage bytes.
    garbage = tmp_path / "bad" / "scl.tif"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a GeoTIFF\n" * 4096)
    items = [copy.deepcopy(i) for i in synth.items]
    (item,) = [i for i in items if i["id"] == POISONED]
    real = Path(item["assets"]["scl"]["href"])
    item["assets"]["scl"]["href"] = str(garbage)

    with serve_stac(synth.collection, items) as url:
        full = write_spec(tmp_path / "full.yaml", spec_doc(url, store, "full", format=fmt))
        args = ("run", str(full), "--local", "--workers", "2", "--retries", "5")
        bad = cli(*args, env=env)
        assert bad.returncode == 1, bad.stderr[-3000:]
        assert "Traceback" not in bad.stderr + bad.stdout
        assert "INCOMPLETE" in bad.stdout and "only failed tasks are redone" in bad.stdout

        run_id = next(p.name for p in Path(store, "_cubeless", "runs").iterdir() if (p / "failed").is_dir())
        manifest = read_manifest(str(store), run_id)
        assert manifest is not None and not manifest.complete
        failed = sorted(manifest.failures)
        assert failed and manifest.tasks_failed == len(failed) and not manifest.missing
        assert manifest.tasks_done == manifest.tasks_planned - len(failed) == 12 - len(failed)
        assert all(t.startswith("2024-07-01.") for t in failed), failed
        tasks = list(RunState(str(store), run_id).iter_tasks())
        poisoned = sorted(t.task_id for t in tasks if any(i["id"] == POISONED for i in t.items))
        assert failed == poisoned, "exactly the tasks reading the garbage COG fail"
        for tid in failed:
            marker = read_json(markers(store, "failed", run_id)[tid])
            assert marker["attempts"] == 6, marker  # 1 + 5 retries
            assert marker["error"] == manifest.failures[tid]
            assert "TaskError" in marker["error"] and "scl.tif" in marker["error"], marker["error"]
            assert tid in bad.stdout  # named in the summary too

        # Nothing was published: readers still see May only, and the store's manifest is May's.
        assert open_cube(str(store)).sizes["time"] == 1
        latest = read_manifest(str(store))
        assert latest is not None and latest.complete and len(latest.committed_bins) == 1
        assert latest.run_id != run_id
        if fmt == "icechunk":
            assert IC.tip(str(store)) == may_tip and len(IC.history(str(store))) == 3  # init, create, May
            assert IC.run_branch(run_id) in IC.open_repo(str(store)).list_branches()

        # Fix the cause, run the same command again: only the failed tasks are done.
        before = {tid: p.stat().st_mtime_ns for tid, p in markers(store, "done", run_id).items()}
        shutil.copyfile(real, garbage)
        good = cli(*args, env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    assert f"resuming run {run_id}: 12 tasks ({12 - len(failed)} already done)" in good.stderr, good.stderr
    assert re.search(r"attempts retried\s+│?\s*0\b", good.stdout), good.stdout
    after = markers(store, "done", run_id)
    redone = sorted(tid for tid, p in after.items() if before.get(tid) != p.stat().st_mtime_ns)
    assert redone == failed
    assert not set(markers(store, "failed", run_id)) & set(failed)  # a done marker clears the failed one
    manifest = read_manifest(str(store))
    assert manifest is not None and manifest.complete and manifest.run_id == run_id
    assert len(manifest.committed_bins) == 3 and not manifest.failures
    if fmt == "icechunk":
        head, below = IC.history(str(store), limit=2)
        assert below.id == may_tip and head.id == manifest.snapshot and head.tags == [run_id]
    assert_identical(store, ref)
