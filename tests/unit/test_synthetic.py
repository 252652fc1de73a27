"""The synthetic Sentinel-2 set: real COGs, valid STAC, and a truth that matches the pixels."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation import validate_dict
from shapely.geometry import box, shape

from cubeless.demo.synthetic import (
    BANDS,
    SCL,
    SceneSet,
    SynthConfig,
    bench_config,
    cloud_cover_of,
    demo_config,
    expected_composite,
    generate,
    load_scene_set,
    median_uint16,
    rebase,
    rewrite_hrefs,
    scene_arrays,
    scene_truth,
    scenes_of,
)

pytestmark = pytest.mark.xdist_group("synthetic")


def _read_at(href: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixel values of a raster at points in its CRS (0 outside), read with rasterio."""
    from rasterio.transform import rowcol

    with rasterio.open(href) as ds:
        arr = ds.read(1)
        rows, cols = rowcol(ds.transform, x, y)
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < arr.shape[0]) & (cols >= 0) & (cols < arr.shape[1])
    out = np.zeros(rows.shape, dtype=arr.dtype)
    out[inside] = arr[rows[inside], cols[inside]]
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> SceneSet:
    return generate(demo_config(), tmp_path_factory.mktemp("synth"))


# -- layout -----------------------------------------------------------------------------------
def test_demo_layout_two_zones_two_months_and_a_gap(demo: SceneSet) -> None:
    zones = {s.tile.epsg for s in demo.scenes}
    assert zones == {32631, 32632}
    months = {(s.datetime.year, s.datetime.month) for s in demo.scenes}
    assert months == {(2024, 5), (2024, 7)}  # June empty: the cube's middle bin has no scenes
    for zone in zones:
        for month in (5, 7):
            n = sum(1 for s in demo.scenes if s.tile.epsg == zone and s.datetime.month == month)
            assert 4 <= n <= 6
    # the tiles overlap across 6 deg E
    foot = {s.tile.name: shape(i["geometry"]) for s, i in zip(demo.scenes, demo.items)}
    west, east = (foot[t.name] for t in demo.config.tiles)
    assert west.intersects(east) and west.intersection(east).area > 0.1 * west.area
    assert west.bounds[0] < 6.0 < east.bounds[2]


def test_files_on_disk(demo: SceneSet) -> None:
    root = demo.root
    assert (root / "collection.json").is_file() and (root / "synthetic.json").is_file()
    lines = (root / "items.ndjson").read_text().splitlines()
    assert len(lines) == len(demo.scenes) == 20
    fc = pystac.ItemCollection.from_file(str(root / "items.json"))
    assert [i.id for i in fc] == [s.id for s in demo.scenes]
    for s in demo.scenes:
        for key in (*BANDS, SCL):
            assert Path(s.hrefs[key]).is_absolute() and Path(s.hrefs[key]).is_file()


# -- COGs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [*BANDS, SCL])
def test_cogs_are_tiled_with_overviews_crs_resolution_nodata(demo: SceneSet, key: str) -> None:
    for scene in demo.scenes[:3] + demo.scenes[-3:]:
        with rasterio.open(scene.hrefs[key]) as ds:
            assert ds.crs.to_epsg() == scene.tile.epsg
            res = 20.0 if key == SCL else 10.0
            assert ds.res == (res, res)
            assert ds.nodata == 0
            assert ds.dtypes[0] == ("uint8" if key == SCL else "uint16")
            assert ds.overviews(1) == [2, 4, 8]
            assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert ds.tags(ns="IMAGE_STRUCTURE")["OVERVIEW_RESAMPLING"] == ("NEAREST" if key == SCL else "AVERAGE")
            assert tuple(ds.bounds) == scene.tile.bounds
            ov = ds.read(1, out_shape=(ds.height // 4, ds.width // 4))  # served from the overview
            assert ov.shape == (ds.height // 4, ds.width // 4) and ov.any()


# -- STAC -------------------------------------------------------------------------------------
def _core(doc: dict) -> dict:
    """The document without extension schemas (they cannot be fetched offline)."""
    return {**doc, "stac_extensions": []}


def test_items_validate_and_carry_projection_raster_eo(demo: SceneSet) -> None:
    for scene, doc in zip(demo.scenes, demo.items):
        validate_dict(_core(doc))  # core STAC 1.1 item schema (bundled with pystac)
        item = pystac.Item.from_dict(doc)
        assert item.id == scene.id and item.collection_id == "sentinel-2-c1-l2a"
        assert item.datetime == scene.datetime
        assert ProjectionExtension.has_extension(item) and RasterExtension.has_extension(item)
        assert item.properties["proj:code"] == f"EPSG:{scene.tile.epsg}"
        assert doc["properties"]["proj:epsg"] == scene.tile.epsg  # legacy field (pystac migrates it away)
        cc = EOExtension.ext(item).cloud_cover
        assert cc is not None and 0 <= cc <= 100
        for key in (*BANDS, SCL):
            asset = item.assets[key]
            proj = ProjectionExtension.ext(asset)
            with rasterio.open(asset.href) as ds:
                assert proj.crs_string == f"EPSG:{ds.crs.to_epsg()}"
                assert tuple(proj.shape) == ds.shape
                assert tuple(proj.transform) == tuple(ds.transform)[:6]
            (band,) = RasterExtension.ext(asset).bands
            assert band.nodata == 0
            if key == SCL:
                assert band.data_type == "uint8" and band.scale is None
            else:
                assert band.data_type == "uint16" and band.scale == 0.0001 and band.offset == -0.1
                assert EOExtension.ext(asset).bands[0].common_name == key
        # the footprint covers the raster
        with rasterio.open(item.assets["red"].href) as ds:
            from rasterio.warp import transform_bounds

            ll = box(*transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
        assert shape(doc["geometry"]).buffer(1e-4).contains(ll.centroid)
        assert box(*doc["bbox"]).buffer(1e-6).contains(shape(doc["geometry"]))


def test_cloud_cover_matches_scl(demo: SceneSet) -> None:
    covers = []
    for scene in demo.scenes:
        with rasterio.open(scene.hrefs[SCL]) as ds:
            covers.append(cloud_cover_of(ds.read(1)))
        assert covers[-1] == scene.cloud_cover
    assert min(covers) < 20 and max(covers) > 60  # clear and very cloudy scenes


def test_collection_validates(demo: SceneSet) -> None:
    validate_dict(_core(demo.collection))
    col = pystac.Collection.from_dict(demo.collection)
    assert col.id == "sentinel-2-c1-l2a"
    (bbox,) = col.extent.spatial.bboxes
    for doc in demo.items:
        assert box(*bbox).buffer(1e-9).contains(box(*doc["bbox"]))
    start, end = col.extent.temporal.intervals[0]
    assert start == min(s.datetime for s in demo.scenes) and end == max(s.datetime for s in demo.scenes)
    assert set(demo.collection["item_assets"]) == {*BANDS, SCL}


# -- truth ------------------------------------------------------------------------------------
def test_truth_matches_cog_pixels_at_interior_points(demo: SceneSet) -> None:
    rng = np.random.default_rng(7)
    compared = 0
    for scene in demo.scenes:
        w, s, e, n = scene.tile.bounds
        x = rng.uniform(w - 300, e + 300, 20_000)
        y = rng.uniform(s - 300, n + 300, 20_000)
        truth = scene_truth(demo.config, scene, x, y, scene.tile.crs)
        far = truth.edge_m >= 2 * demo.config.scl_res
        assert far.mean() > 0.3
        for key in (*BANDS, SCL):
            got = _read_at(scene.hrefs[key], x[far], y[far])
            want = truth.scl[far] if key == SCL else truth.values[key][far]
            np.testing.assert_array_equal(got, want, err_msg=f"{scene.id} {key}")
        compared += int(far.sum())
    assert compared > 150_000


def test_truth_in_lonlat_equals_truth_in_utm(demo: SceneSet) -> None:
    from pyproj import Transformer

    scene = demo.scenes[0]
    w, s, e, n = scene.tile.bounds
    rng = np.random.default_rng(3)
    x, y = rng.uniform(w, e, 500), rng.uniform(s, n, 500)
    lon, lat = Transformer.from_crs(scene.tile.epsg, 4326, always_xy=True).transform(x, y)
    a = scene_truth(demo.config, scene, x, y, scene.tile.crs)
    b = scene_truth(demo.config, scene, lon, lat, "EPSG:4326")
    np.testing.assert_array_equal(a.scl, b.scl)
    np.testing.assert_array_equal(a.values["red"], b.values["red"])
    np.testing.assert_allclose(a.edge_m, b.edge_m, atol=1e-3)


def test_scenes_contain_every_required_class_and_nodata_strips(demo: SceneSet) -> None:
    seen: set[int] = set()
    for scene in demo.scenes:
        with rasterio.open(scene.hrefs[SCL]) as ds:
            scl = ds.read(1)
        with rasterio.open(scene.hrefs["red"]) as ds:
            red = ds.read(1)
        seen |= set(np.unique(scl).tolist())
        # a swath-edge strip: a band of SCL 0 touching the west or east edge, with band value 0
        assert (scl == 0).any() and (scl[:, 0] == 0).any() | (scl[:, -1] == 0).any()
        assert ((red == 0) == (np.kron(scl, np.ones((2, 2), np.uint8)) == 0)).mean() > 0.98
        assert red[red > 0].min() >= 1
    assert {0, 3, 4, 5, 6, 8, 9, 10, 11} <= seen


def test_generation_is_deterministic_and_seeded() -> None:
    cfg = demo_config()
    scene = scenes_of(cfg)[3]
    a, b = scene_arrays(cfg, scene), scene_arrays(cfg, scene)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other = scene_arrays(demo_config(seed=1), scenes_of(demo_config(seed=1))[3])
    assert (other["red"] != a["red"]).mean() > 0.3


def test_noise_changes_values_but_not_masks() -> None:
    clean = demo_config()
    noisy = demo_config(noise=40.0)
    scene = scenes_of(clean)[0]
    a, b = scene_arrays(clean, scene), scene_arrays(noisy, scene)
    np.testing.assert_array_equal(a[SCL], b[SCL])
    np.testing.assert_array_equal(a["red"] == 0, b["red"] == 0)
    d = b["red"].astype(float) - a["red"]
    assert 30 < d[a["red"] > 0].std() < 50 and abs(d[a["red"] > 0].mean()) < 2


def test_median_convention() -> None:
    stack = np.array([[10, 10, 7, 0], [20, 11, 9, 0], [31, 0, 0, 0], [40, 0, 0, 0]], dtype=np.uint16)
    valid = stack != 0
    # [10,20,31,40] -> 25.5 -> 26 (half to even); [10,11] -> 10.5 -> 10; [7,9] -> 8; none -> 0
    np.testing.assert_array_equal(median_uint16(stack, valid), [26, 10, 8, 0])


def test_expected_composite_matches_cog_reads(demo: SceneSet) -> None:
    """expected_composite == grouping by day + masking + median of values sampled from the COGs."""
    lon = np.linspace(demo.bbox[0], demo.bbox[2], 90)
    lat = np.linspace(demo.bbox[1], demo.bbox[3], 40)
    xx, yy = np.meshgrid(lon, lat)
    start, end = date(2024, 5, 1), date(2024, 6, 1)
    exp = expected_composite(demo.config, demo.scenes, xx, yy, "EPSG:4326", start=start, end=end)
    from pyproj import Transformer

    days: dict[date, dict[str, np.ndarray]] = {}
    for scene in demo.scenes_in(start, end):
        x, y = Transformer.from_crs(4326, scene.tile.epsg, always_xy=True).transform(xx.ravel(), yy.ravel())
        fused = days.setdefault(scene.datetime.date(), {k: np.zeros(xx.size, np.uint16) for k in (*BANDS, SCL)})
        for key in (*BANDS, SCL):
            v = _read_at(scene.hrefs[key], np.asarray(x), np.asarray(y))
            fused[key] = np.where(fused[key] == 0, v, fused[key])
    scl = np.array([d[SCL] for d in days.values()])
    valid = ~np.isin(scl, (0, 1, 3, 8, 9, 10))
    far = (exp.edge_m >= 40).ravel()
    assert far.mean() > 0.3
    for key in BANDS:
        stack = np.array([d[key] for d in days.values()])
        med = median_uint16(stack, valid & (stack != 0))
        np.testing.assert_array_equal(med[far], exp.values[key].ravel()[far])
    np.testing.assert_array_equal(valid.sum(0)[far], exp.count.ravel()[far])
    assert len(exp.scenes) == 10 and (exp.count[exp.edge_m >= 40] == 0).any()
    assert ((exp.count % 2 == 0) & (exp.count > 0)).any()  # even counts: mean of the middle two


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_reference_cube_built_with_odc_stac_matches_truth(demo: SceneSet, tmp_path: Path) -> None:
    """A cube made with odc-stac + numpy + xarray (not cubeless) agrees with the truth helper."""
    import odc.stac
    import xarray as xr
    from odc.geo.geobox import GeoBox
    from odc.geo.geom import BoundingBox

    from cubeless.demo.specs import demo_spec
    from cubeless.spec import parse_spec
    from cubeless.timebins import time_bins
    from cubeless.demo.verify import compare_cube

    store = str(tmp_path / "ref.zarr")
    spec = parse_spec(demo_spec("http://127.0.0.1:9", store))
    gb = GeoBox.from_bbox(BoundingBox(*spec.bbox, crs="EPSG:4326"), crs=spec.crs, resolution=spec.resolution)
    items = [pystac.Item.from_dict(i) for i in demo.items]
    steps = []
    for tb in time_bins(spec.start, spec.end, spec.interval):
        its = [i for i in items if tb.start <= i.datetime.date() < tb.end]
        shape2d = gb.shape.yx
        out = {b: np.zeros(shape2d, np.uint16) for b in (*spec.bands, "count")}
        if its:
            ds = odc.stac.load(its, bands=[*spec.bands, "scl"], geobox=gb, groupby="solar_day", chunks=None,
                               resampling={"*": "bilinear", "scl": "nearest"})
            valid = ~np.isin(ds.scl.values, spec.mask.scl_exclude)
            for b in spec.bands:
                v = ds[b].values
                out[b] = median_uint16(v, valid & (v != 0))
            out["count"] = (valid & (ds[spec.bands[0]].values != 0)).sum(0).astype(np.uint16)
        steps.append(out)
    coords = {"time": [np.datetime64(tb.start, "ns") for tb in time_bins(spec.start, spec.end, spec.interval)],
              "latitude": gb.coords["latitude"].values, "longitude": gb.coords["longitude"].values}
    cube = xr.Dataset(
        {k: (("time", "latitude", "longitude"), np.stack([s[k] for s in steps])) for k in (*spec.bands, "count")},
        coords=coords,
    )
    cube.to_zarr(store, zarr_format=3, consolidated=True)
    result = compare_cube(store, demo, spec)
    assert result.ok, result.summary()
    assert [b.scenes for b in result.bins] == [10, 0, 10]
    assert all(b.compared > 30_000 for b in result.bins)
    assert result.bins[0].valid_pixels > 0.8 * result.bins[0].compared
    # and a wrong pixel is caught
    bad = cube.copy(deep=True)
    r, c = np.argwhere(np.asarray(bad["red"][0].values) > 0)[1000]
    bad["red"][0, r, c] = bad["red"][0, r, c] + 1
    store2 = str(tmp_path / "bad.zarr")
    bad.to_zarr(store2, zarr_format=3, consolidated=True)
    worse = compare_cube(store2, demo, spec, margin_m=0.0)
    assert not worse.ok and worse.bins[0].mismatches["red"] >= 1
    # a time step that is no calendar bin of the spec is caught too (bins come from the calendar)
    shifted = cube.assign_coords(time=[np.datetime64("2024-05-02", "ns"), *cube["time"].values[1:]])
    store3 = str(tmp_path / "shifted.zarr")
    shifted.to_zarr(store3, zarr_format=3, consolidated=True)
    off = compare_cube(store3, demo, spec)
    assert not off.ok and "time step 0: 2024-05-02 is not the first day of a month" in off.problems, off.problems


# -- configs, hrefs, reload -------------------------------------------------------------------
def test_config_json_round_trip_and_reload(demo: SceneSet) -> None:
    assert SynthConfig.from_json(json.loads(json.dumps(demo.config.to_json()))) == demo.config
    again = load_scene_set(demo.root)
    assert again.config == demo.config
    assert again.scenes == demo.scenes
    assert again.items == demo.items


def test_rewrite_hrefs_for_upload(demo: SceneSet, tmp_path: Path) -> None:
    doc = demo.items[0]
    moved = rewrite_hrefs(doc, str(demo.root.resolve()), "s3://bucket/synth/")
    assert moved["assets"]["red"]["href"] == f"s3://bucket/synth/data/{doc['id']}/red.tif"
    assert moved["links"][0]["href"] == "s3://bucket/synth/collection.json"
    assert doc["assets"]["red"]["href"].startswith(str(demo.root.resolve()))  # input untouched
    s3 = rebase(demo, "s3://bucket/synth", tmp_path / "s3cat")
    assert all(h.startswith("s3://bucket/synth/data/") for s in s3.scenes for h in s.hrefs.values())
    first = json.loads((tmp_path / "s3cat" / "items.ndjson").read_text().splitlines()[0])
    assert first["assets"]["scl"]["href"] == f"s3://bucket/synth/data/{first['id']}/scl.tif"
    back = rebase(s3, str(demo.root.resolve()))
    assert back.items == demo.items


def test_file_uri_hrefs(tmp_path: Path) -> None:
    cfg = demo_config(tile_size_m=1920.0, overlap_m=600.0, days=(3, 9))
    ss = generate(cfg, tmp_path, base_href="file://")
    href = ss.scenes[0].hrefs["red"]
    assert href.startswith("file:///")
    with rasterio.open(href) as ds:
        assert ds.shape == (192, 192)


def test_sizes_are_parameters_bench_config(tmp_path: Path) -> None:
    bench = bench_config()
    assert len(scenes_of(bench)) == 25
    (tile,) = bench.tiles
    assert tile.size_m >= 36_000
    # a shrunken bench set generates with the same code path
    small = bench_config(tile_size_m=3840.0, scenes=3)
    ss = generate(small, tmp_path)
    assert len(ss.scenes) == 3
    with rasterio.open(ss.scenes[0].hrefs["red"]) as ds:
        assert ds.shape == (384, 384) and ds.overviews(1) == [2, 4, 8]


def test_parallel_generation_writes_the_same_files(tmp_path: Path) -> None:
    cfg = demo_config(tile_size_m=1920.0, overlap_m=600.0, days=(3, 9), noise=20.0)
    one = generate(cfg, tmp_path / "one")
    two = generate(cfg, tmp_path / "two", workers=2)
    assert [s.cloud_cover for s in one.scenes] == [s.cloud_cover for s in two.scenes]
    for a, b in zip(one.scenes, two.scenes):
        for key in (*BANDS, SCL):
            with rasterio.open(a.hrefs[key]) as da, rasterio.open(b.hrefs[key]) as db:
                np.testing.assert_array_equal(da.read(1), db.read(1))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_demo_and_earth_search_specs_are_valid(demo: SceneSet) -> None:
    from cubeless.demo.specs import DEMO_UTM_CRS, demo_spec, earth_search_spec
    from cubeless.grid import cube_geobox, tile_shape
    from cubeless.spec import parse_spec

    for crs in ("EPSG:4326", DEMO_UTM_CRS):
        spec = parse_spec(demo_spec("http://127.0.0.1:8000", "/tmp/demo.zarr", crs=crs))
        assert spec.crs == crs and spec.collection == "sentinel-2-c1-l2a"
        assert (spec.start, spec.end) == (date(2024, 5, 1), date(2024, 7, 31))
        assert box(*spec.bbox).buffer(1e-6).contains(box(*demo.bbox))  # every footprint is inside
        geobox = cube_geobox(spec)
        ny, nx = tile_shape(geobox, spec.chunk)
        assert ny >= 2 and nx >= 3  # several tiles each way, edge tiles included
        assert geobox.shape.x * geobox.shape.y < 400_000  # small: the demo runs in seconds
    es = parse_spec(earth_search_spec("/tmp/vt.zarr"))
    assert es.stac_api == "https://earth-search.aws.element84.com/v1"
    assert es.bbox is not None and es.bbox[0] < -72 < es.bbox[2]  # straddles UTM 18/19
