"""Issue 4, scenario 6: runs side by side.

* Two different cubes built at once (two `cubeless run --local` processes, two stores) both finish
  and equal their fault-free references, on both formats.
* The same cube started twice: the second invocation is refused (exit 2, one line naming the run
  in progress) by the cube lock ``<store>/_cubeless/lock``, and the first finishes undisturbed.
* The lock itself: exclusive, named holder, freed by the kernel when its holder dies (local), and
  on object stores a conditional create with a heartbeat, taken over once stale.

The lock and the refusal of a second run of the same cube are zarr only: the lock is the same
object at the same key for both formats (``_cubeless/lock`` beside the cube), taken by the same
code before the format matters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from tests.faults.conftest import FORMATS, cli_popen, make_spec, spec_doc, store_for, write_spec
from faultkit import assert_identical, assert_same_cube, cube_files, markers, wait_for

from cubeless import fs
from cubeless.errors import UserError
from cubeless.state import LOCK_KEY, CubeLock, CubeLocked

pytestmark = pytest.mark.xdist_group("faults-b")


# -- the lock ---------------------------------------------------------------------------------------
def test_lock_local_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    store = tmp_path / "cube.zarr"
    first = CubeLock(str(store)).acquire("cube-aaaaaaaaaaaa")
    assert first.held and (store / LOCK_KEY).is_file()
    with pytest.raises(CubeLocked) as err:
        CubeLock(str(store)).acquire("cube-bbbbbbbbbbbb")
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert msg.startswith("a run of this cube is in progress (run id cube-aaaaaaaaaaaa, started ")
    assert f"pid {os.getpid()}" in msg and "wait for it" in msg
    first.acquire("again")  # re-entrant for its holder
    first.release()
    first.release()  # harmless
    assert not (store / LOCK_KEY).exists()
    with CubeLock(str(store)).acquire("cube-bbbbbbbbbbbb") as second:
        assert second.held
    assert not (store / LOCK_KEY).exists()


def test_lock_local_is_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed holder leaves its lock file behind, but not its lock: the kernel drops flocks."""
    store = tmp_path / "cube.zarr"
    code = textwrap.dedent(f"""
        import sys, time
        from cubeless.state import CubeLock
        CubeLock({str(store)!r}).acquire("cube-dead00000000")
        print("locked", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        with pytest.raises(CubeLocked, match="cube-dead00000000"):
            CubeLock(str(store)).acquire("cube-live00000000")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert (store / LOCK_KEY).is_file()  # stale content stays ...
    with CubeLock(str(store)).acquire("cube-live00000000") as lock:  # ... but does not block
        assert json.loads((store / LOCK_KEY).read_text())["run_id"] == "cube-live00000000"
        assert lock.held


def test_lock_remote_conditional_create_heartbeat_and_stale(tmp_path: Path) -> None:
    """Object stores (here fsspec's memory://, which honours create-only puts like S3's If-None-Match)."""
    store = f"memory://faults-lock/{tmp_path.name}/cube.zarr"
    uri = fs.join(store, LOCK_KEY)
    first = CubeLock(store, stale_after=30).acquire("cube-aaaaaaaaaaaa")
    with pytest.raises(CubeLocked, match=r"run id cube-aaaaaaaaaaaa, started .*, pid \d+ on "):
        CubeLock(store).acquire("cube-bbbbbbbbbbbb")
    first.release()
    assert not fs.exists(uri)

    def plant(**fields: object) -> None:
        now = datetime.now(timezone.utc)
        doc = {"run_id": "cube-old000000000", "started": now.isoformat(), "heartbeat": now.isoformat(),
               "host": "elsewhere", "pid": 1, "pid_start": None, "token": "t0", **fields}
        fs.put_bytes(uri, json.dumps(doc).encode())

    plant()  # a live holder on another host: refused
    with pytest.raises(CubeLocked, match="cube-old000000000"):
        CubeLock(store).acquire("cube-cccccccccccc")
    plant(heartbeat=(datetime.now(timezone.utc) - timedelta(hours=1)).isoformat())  # heartbeat stopped
    with CubeLock(store, stale_after=300).acquire("cube-cccccccccccc") as lock:
        assert lock.held and json.loads(fs.get_bytes(uri))["run_id"] == "cube-cccccccccccc"
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    plant(host=socket.gethostname(), pid=int(dead.stdout))  # a dead process on this host
    with CubeLock(store).acquire("cube-dddddddddddd") as lock:
        assert lock.held
    plant(host=socket.gethostname(), pid=os.getpid())  # a live one
    with pytest.raises(CubeLocked):
        CubeLock(store).acquire("cube-eeeeeeeeeeee")
    fs.delete(uri)


def test_lock_remote_heartbeat_keeps_it_fresh(tmp_path: Path) -> None:
    store = f"memory://faults-lock/{tmp_path.name}/beat.zarr"
    uri = fs.join(store, LOCK_KEY)
    with CubeLock(store, stale_after=10).acquire("cube-aaaaaaaaaaaa"):  # beats every 1 s
        first = json.loads(fs.get_bytes(uri))["heartbeat"]
        wait_for(lambda: json.loads(fs.get_bytes(uri))["heartbeat"] != first, 10, "a heartbeat", interval=0.1)
    assert not fs.exists(uri)


# -- runs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_two_different_cubes_at_once(tmp_path: Path, stac: str, reference: Callable[[str], Path],
                                     env: dict[str, str], fmt: str) -> None:
    """Cube A is May in red, green, blue; cube B is May in red only (another cube: its identity
    differs). Built at once by two CLI processes; A equals the reference, and B equals the
    reference's red and count variables (the count is that of the first band, red, in both)."""
    ref = reference("may")
    a, b = store_for(tmp_path, fmt, "a"), store_for(tmp_path, fmt, "b")
    spec_a = write_spec(tmp_path / "a.yaml", spec_doc(stac, a, "may", format=fmt))
    spec_b = write_spec(tmp_path / "b.yaml", spec_doc(stac, b, "may", name="faults-red", bands=["red"], format=fmt))
    procs = [cli_popen("run", str(s), "--local", "--workers", "1", env=env) for s in (spec_a, spec_b)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert_identical(a, ref)
    if fmt == "icechunk":
        assert_same_cube(b, ref, variables=["red", "count"])
        return
    got, want = cube_files(b), cube_files(ref)
    # Group metadata (the root's and each pyramid level's) lists the bands, so it differs; every
    # array of red and count, at full resolution and in every level, is the same.
    def group_meta(k: str) -> bool:
        return k == "zarr.json" or (k.endswith("/zarr.json") and k.split("/")[0].isdigit() and k.count("/") == 1)

    def kept(k: str) -> bool:
        parts = k.split("/")
        band = parts[1] if parts[0].isdigit() and len(parts) > 1 else parts[0]
        return band not in ("green", "blue") and not group_meta(k)

    want = {k: v for k, v in want.items() if kept(k)}
    got = {k: v for k, v in got.items() if not group_meta(k)}
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


def test_same_cube_twice_at_once_is_refused(tmp_path: Path, stac: str, reference: Callable[[str], Path],
                                            env: dict[str, str]) -> None:
    ref = reference("full")
    store = tmp_path / "cube.zarr"
    spec = write_spec(tmp_path / "spec.yaml", spec_doc(stac, store, "full"))
    first = cli_popen("run", str(spec), "--local", "--workers", "2", env=env)
    try:
        wait_for(lambda: markers(store, "done"), 300, "the first run to finish a task")
        run_id = next(Path(store, "_cubeless", "runs").iterdir()).name
        t0 = time.monotonic()
        second = cli_popen("run", str(spec), "--local", "--workers", "2", env=env)
        out2, err2 = second.communicate(timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused: nothing was tested"
        out1, err1 = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert second.returncode == 2, (out2, err2)
    lines = [ln for ln in err2.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err2 + out2, err2
    assert lines[0].startswith(f"error: a run of this cube is in progress (run id {run_id}, started "), lines[0]
    assert "wait for it" in lines[0]
    assert time.monotonic() - t0 < 120
    assert first.returncode == 0, err1[-3000:]
    assert not (store / LOCK_KEY).exists()
    assert_identical(store, ref)


def test_planning_under_the_lock_warns_nothing(tmp_path: Path, stac: str) -> None:
    """The lock creates `_cubeless/` before the cube exists; creating the cube then must not
    make zarr warn about it (users would see the warning on every first run)."""
    import warnings

    from cubeless.prepare import prepare_run

    spec = make_spec(stac, tmp_path / "cube.zarr", "may")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with CubeLock(spec.store) as lock:
            prepared = prepare_run(spec, lock=lock)
    assert prepared.record is not None and len(prepared.todo) == 6
