"""End to end: the local runner on synthetic scenes served by rustac, checked against the truth.

The expected cube comes from the analytic definition of the synthetic scenes
(:mod:`cubeless.demo.verify`), never from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import yaml

from cubeless.demo.specs import DEMO_UTM_CRS, demo_spec
from cubeless.demo.verify import compare_cube, compare_edges
from cubeless.grid import cube_geobox, tile_shape
from cubeless.runner import RunPolicy, run_local
from cubeless.spec import parse_spec

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-local")]

CLI = [sys.executable, "-m", "cubeless.cli"]


def _build(spec_doc, **policy):
    spec = parse_spec(spec_doc)
    outcome = run_local(spec, policy=RunPolicy(workers=2, **policy))
    return spec, outcome


@pytest.mark.parametrize("crs", ["EPSG:4326", DEMO_UTM_CRS], ids=["geographic-two-utm-zones", "utm-target"])
def test_cube_equals_analytic_truth(tmp_path, scene_set, stac_url, crs):
    spec, outcome = _build(demo_spec(stac_url, str(tmp_path / "cube.zarr"), crs=crs))
    m = outcome.manifest
    assert m.complete and m.tasks_failed == 0 and m.tasks_done == m.tasks_planned > 0

    # The grid has partial edge tiles (the last tile row/column is smaller than the chunk).
    gb = cube_geobox(spec)
    ny, nx = gb.shape.yx
    assert ny % spec.chunk and nx % spec.chunk, "the demo grid must exercise partial edge tiles"
    nty, ntx = tile_shape(gb, spec.chunk)
    assert m.tasks_planned == nty * ntx * 3  # every tile is on land, three monthly bins

    result = compare_cube(spec.store, scene_set, spec)
    assert result.ok, result.summary()
    # The pixels left out above (near a swath's nodata strip, a footprint or a block edge, where
    # the direct and warped read paths differ) within what any reading near them could give.
    edges = compare_edges(spec.store, scene_set, spec)
    assert edges.ok and edges.at_nodata_edge > 1_000, edges.summary()
    if crs == DEMO_UTM_CRS:  # the edge check bites: a copy whose May red is halved fails it
        import shutil

        import zarr

        bad = tmp_path / "halved.zarr"
        shutil.copytree(spec.store, bad)
        red, count = zarr.open_array(str(bad / "red"), mode="r+"), zarr.open_array(str(bad / "count"))
        red[0] = np.where(count[0] > 0, red[0] // 2, 0)
        broken = compare_edges(str(bad), scene_set, spec)
        assert broken.violations["red"] > 500 and broken.violations["count"] == 0, broken.summary()

    ds = xr.open_zarr(spec.store, mask_and_scale=False)  # the stored DNs (0 = no observation)
    assert list(ds.time.dt.month.values) == [5, 6, 7]
    assert ds.red.rio.crs is not None and ds.red.rio.crs.to_string() == crs
    assert ds.red.dims == spec.dims
    june = ds.isel(time=1)
    assert int(june["count"].max()) == 0 and int(june.red.max()) == 0  # the month with no scenes
    may = ds.isel(time=0)
    # masked pixels exist (count 0 inside the footprint) and water/snow were kept (checked by truth)
    assert (may["count"].values == 0).any() and (may["count"].values > 0).mean() > 0.5
    # Edge tiles landed at their true offsets: the partial last tile row and column hold data
    # (the truth comparison above checks the values pixel by pixel).
    _, ydim, xdim = spec.dims
    assert (may.red.isel({ydim: slice((nty - 1) * spec.chunk, None)}).values > 0).any()
    assert (may.red.isel({xdim: slice((ntx - 1) * spec.chunk, None)}).values > 0).any()


def test_truth_covers_water_and_snow(scene_set):
    """The synthetic scenes do contain the classes the default mask must keep (6 water, 11 snow)."""
    import rasterio

    classes = set()
    for item in scene_set.items:
        with rasterio.open(item["assets"]["scl"]["href"]) as src:
            classes |= set(np.unique(src.read(1)).tolist())
    assert {3, 6, 8, 9, 11}.issubset(classes)


def test_extend_then_resume_is_idempotent(tmp_path, scene_set, stac_url):
    """Build May only, then extend to July: same cube as one run of May-July; a rerun does nothing."""
    full_doc = demo_spec(stac_url, str(tmp_path / "full.zarr"))
    _build(full_doc)
    part_doc = {**full_doc, "store": str(tmp_path / "part.zarr"), "end": "2024-05-31"}
    spec_may, first = _build(part_doc)
    assert first.manifest.complete and len(first.manifest.committed_bins) == 1
    spec_all, second = _build({**part_doc, "end": full_doc["end"]})
    assert second.manifest.complete and [b.label for b in second.manifest.run_bins] == ["2024-06-01", "2024-07-01"]
    a = xr.open_zarr(full_doc["store"]).load()
    b = xr.open_zarr(part_doc["store"]).load()
    for v in ("red", "green", "blue", "count"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    _, third = _build({**part_doc, "end": full_doc["end"]})
    assert third.prepared.record is None and third.pool.done == []


def test_cli_run_validate_plan(tmp_path, stac_url):
    doc = demo_spec(stac_url, str(tmp_path / "cli.zarr"), crs=DEMO_UTM_CRS)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    v = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True)
    assert v.returncode == 0 and "ok" in v.stdout
    p = subprocess.run([*CLI, "plan", str(path), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["tasks"] == 18 and summary["scenes_found"] == 20
    assert summary["empty_bins"] == ["2024-06-01"]  # the demo has no June scenes
    assert not Path(doc["store"]).exists(), "plan must not write anything"
    r = subprocess.run([*CLI, "run", str(path), "--local", "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "COMPLETE" in r.stdout
    assert "bins without scenes" in r.stdout and "2024-06-01" in r.stdout, r.stdout
    m = subprocess.run([*CLI, "manifest", doc["store"]], capture_output=True, text=True)
    assert json.loads(m.stdout)["complete"] is True
