"""Issue 4, scenario 5: a reader polling ``xarray.open_zarr(store)`` while runs write never sees a
half-written time step, and never a manifest claiming more than the cube holds.

Two runs: one creates the cube (May), the next extends it (June, July). A reader thread opens the
cube over and over (xarray's defaults: consolidated metadata) and checks each snapshot against
the fault-free cube: the time axis only ever has a committed length (0 or absent, 1, 3, never 2),
every visible time step equals the reference everywhere (all tiles, all variables), and a
complete manifest read just before never lists more time steps than the snapshot has.

On both formats. With Icechunk the reader opens a readonly session on ``main`` each time (what
``cubeless.open`` does) and records the snapshot it was given: every one of them must be a
committed snapshot of main's history (never a run's staging commit, whose grown time axis waits
on the run's branch until the commit amends it).
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import xarray as xr
from tests.faults.conftest import FORMATS, POLICY, make_spec, store_for
from faultkit import read_json

from cubeless import icechunk_store as IC
from cubeless.errors import CubelessError
from cubeless.runner import run_local

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("faults-b"),
    # While the cube is being created its root zarr.json exists before its consolidated metadata.
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"),
]


class Reader(threading.Thread):
    def __init__(self, store: Path, ref: xr.Dataset, fmt: str = "zarr") -> None:
        super().__init__(daemon=True)
        self.store, self.ref, self.fmt = store, ref, fmt
        self.snapshots: set[str] = set()  # Icechunk: the snapshot ids the reader was given
        self.stop = threading.Event()
        self.lengths: list[int] = []
        self.started: list[float] = []  # when each snapshot of self.lengths began
        self.unseen_chunks = 0  # snapshots taken while chunks past the visible length existed
        self.data_checks = 0
        self.problems: list[str] = []
        self._last_data_check = (-2, 0.0)  # (length, when)

    def _invisible_chunks(self, n: int) -> bool:
        if self.fmt == "icechunk":  # a run's branch: staged work main does not show
            return any(b.startswith(IC.RUN_BRANCH_PREFIX) for b in IC.open_repo(str(self.store)).list_branches())
        return any((self.store / v / "c" / str(t)).exists() for v in ("red", "count") for t in range(n, 3))

    def snapshot(self) -> None:
        self.started.append(time.monotonic())
        try:
            self._snapshot()
        finally:
            del self.started[len(self.lengths):]  # a snapshot that recorded no length

    def _snapshot(self) -> None:
        manifest_path = self.store / "_cubeless" / "manifest.json"
        manifest = read_json(manifest_path) if manifest_path.exists() else None
        if self.fmt == "icechunk":
            ds = self._open_icechunk()
            if ds is None:
                self.lengths.append(-1)
                return
        else:
            ds = self._open_zarr()
            if ds is None:
                return
        self._check(ds, manifest)

    def _open_icechunk(self) -> xr.Dataset | None:
        from zarr.errors import GroupNotFoundError

        try:
            session = IC.read_session(str(self.store))
        except CubelessError:  # no repository yet
            return None
        try:
            ds = xr.open_zarr(session.store, chunks=None, mask_and_scale=False, consolidated=False)
        except (GroupNotFoundError, FileNotFoundError):  # the repository's initial snapshot: no cube yet
            return None
        self.snapshots.add(str(session.snapshot_id))
        return ds

    def _open_zarr(self) -> xr.Dataset | None:
        try:
            return xr.open_zarr(self.store, chunks=None, mask_and_scale=False)
        except FileNotFoundError:
            self.lengths.append(-1)
            return None
        except Exception as exc:  # noqa: BLE001 - a cube without consolidated metadata yet: no cube
            if not self.store.exists() or "zarr.json" not in {p.name for p in self.store.iterdir()}:
                self.lengths.append(-1)
                return None
            raise AssertionError(f"opening the cube failed: {exc!r}") from exc

    def _check(self, ds: xr.Dataset, manifest: Any) -> None:
        n = ds.sizes.get("time", 0)
        self.lengths.append(n)
        if n not in (0, 1, 3):
            self.problems.append(f"time axis of length {n}: a run is half visible")
        if self._invisible_chunks(n):
            self.unseen_chunks += 1
        if manifest and manifest["complete"] and len(manifest["committed_bins"]) > n:
            self.problems.append(f"manifest says {len(manifest['committed_bins'])} steps, cube shows {n}")
        # The data of every visible step is compared whenever the length changes (the moment new
        # steps appear) and otherwise every 0.3 s; the cheap checks above run on every snapshot.
        seen_n, seen_at = self._last_data_check
        if n and (n != seen_n or time.monotonic() - seen_at > 0.3):
            self._last_data_check = (n, time.monotonic())
            self.data_checks += 1
            if not np.array_equal(ds["time"].values, self.ref["time"].values[:n]):
                self.problems.append(f"time values {ds['time'].values} differ")
            for name in self.ref.data_vars:
                got = ds[name].values
                if not np.array_equal(got, self.ref[name].values[:n]):
                    bad = np.argwhere(got != self.ref[name].values[:n])
                    self.problems.append(f"{name}: {len(bad)} pixels differ at length {n}, e.g. {bad[0].tolist()}")

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.snapshot()
            except Exception:  # noqa: BLE001 - reported by the test
                self.problems.append(traceback.format_exc(limit=3))
            time.sleep(0.005)


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_never_see_half_a_run(tmp_path: Path, stac: str, reference: Callable[[str], Path], fmt: str) -> None:
    ref = xr.open_zarr(reference("full"), chunks=None, mask_and_scale=False).load()
    store = store_for(tmp_path, fmt)
    reader = Reader(store, ref, fmt)
    reader.start()
    phases: list[tuple[str, Any]] = []
    try:
        for variant in ("may", "full"):
            # A phase holds the snapshots that began during its run: a snapshot begun before
            # the previous run committed may end after it (a slow open on a loaded machine).
            t0 = time.monotonic()
            out = run_local(make_spec(stac, store, variant, format=fmt), policy=POLICY)
            assert out.complete, out.manifest
            t1 = time.monotonic()
            phases.append((variant, [n for n, t in zip(list(reader.lengths), list(reader.started))
                                     if t0 <= t < t1]))
        time.sleep(0.2)
    finally:
        reader.stop.set()
        reader.join(30)
    assert not reader.problems, reader.problems[:5]
    (_, first), (_, second) = phases
    assert len(first) >= 5 and len(second) >= 5, "the reader barely ran"
    assert reader.data_checks >= 3
    assert set(first) <= {-1, 0, 1} and set(second) <= {1, 3}, (set(first), set(second))
    assert 1 in second and second[-1] in (1, 3), "the extension was not observed while it ran"
    assert reader.lengths == sorted(reader.lengths), "the time axis shrank"
    assert reader.unseen_chunks > 0, "no snapshot was taken while uncommitted chunks were on disk"
    assert reader.lengths[-1] == 3
    if fmt == "icechunk":
        main = {s.id for s in IC.history(str(store))}
        staged = {read_json(p)["staged"] for p in store.glob("_cubeless/runs/*/icechunk.json")}
        assert len(staged) == 2 and not staged & main
        assert reader.snapshots and reader.snapshots <= main, f"not on main: {reader.snapshots - main}"
        assert len(reader.snapshots) >= 2  # of the empty cube, May, May-July: the reader saw main move
