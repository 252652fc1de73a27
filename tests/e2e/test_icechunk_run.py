"""End to end, Icechunk format: the local runner builds the demo cube as one snapshot per run, with
pixel values identical to the Zarr format's and equal to the analytic truth."""

from __future__ import annotations

import numpy as np
import pytest

from cubeless import icechunk_store as IC
from cubeless.commit import read_manifest
from cubeless.demo.specs import demo_spec
from cubeless.demo.verify import compare_cube
from cubeless.runner import RunPolicy, run_local
from cubeless.spec import parse_spec
from cubeless.store import open_cube

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-local")]


def _run(doc):
    spec = parse_spec(doc)
    return spec, run_local(spec, policy=RunPolicy(workers=2))


def test_icechunk_cube_equals_zarr_cube_and_truth(tmp_path, scene_set, stac_url):
    zdoc = {**demo_spec(stac_url, str(tmp_path / "cube.zarr")), "end": "2024-06-30"}
    idoc = {**zdoc, "store": str(tmp_path / "cube.icechunk"), "format": "icechunk"}
    _, zout = _run(zdoc)
    ispec, iout = _run(idoc)
    m = iout.manifest
    assert m.complete and m.tasks_done == m.tasks_planned > 0 and m.snapshot
    assert compare_cube(ispec.store, scene_set, ispec).ok

    z, i = open_cube(zdoc["store"], raw=True).load(), open_cube(idoc["store"], raw=True).load()
    for v in (*ispec.bands, "count"):
        assert i[v].dtype == z[v].dtype == np.uint16
        np.testing.assert_array_equal(i[v].values, z[v].values)
    np.testing.assert_array_equal(i.time.values, z.time.values)

    hist = IC.history(ispec.store)
    assert hist[0].id == m.snapshot == IC.tip(ispec.store) and hist[0].run_id == m.run_id
    assert hist[0].bins == ["2024-05-01", "2024-06-01"] and m.run_id in hist[0].message
    assert hist[0].tags == [m.run_id] and len(hist) == 3  # initialized, cube created, the run
    assert read_manifest(ispec.store).snapshot == m.snapshot
    assert m.timings["icechunk_fork_bytes"] > 0

    # Extending is one more snapshot; the first run's version still reads as it was.
    _, more = _run({**idoc, "end": "2024-07-31"})
    assert more.manifest.complete and len(more.manifest.committed_bins) == 3
    assert IC.history(ispec.store)[1].id == m.snapshot
    assert open_cube(ispec.store, version=m.run_id).sizes["time"] == 2
    assert open_cube(ispec.store).sizes["time"] == 3
    _, again = _run({**idoc, "end": "2024-07-31"})
    assert again.prepared.record is None and len(IC.history(ispec.store)) == 4
