"""Land filter: which tiles touch land (global-land-mask) and the AOI; fast at continental scale."""

from __future__ import annotations

import time

import numpy as np
import pytest
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from shapely.geometry import Polygon, box

from cubeless import land
from cubeless.grid import cube_geobox, iter_tiles, tile_geobox, tile_shape
from cubeless.land import any_land, land_tiles, select_tiles, tile_footprints
from cubeless.spec import parse_spec

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul:PendingDeprecationWarning",  # odc-geo internals (brute-force references)
    "ignore:The 'shapely.ops.transform:DeprecationWarning",
)

BRAZIL = (-74.0, -33.8, -34.8, 5.3)
AEGEAN = (22.0, 35.0, 28.5, 41.0)


def geobox_for(bbox, crs="EPSG:4326", resolution=0.00027):
    spec = parse_spec(
        {"name": "t", "bbox": list(bbox), "start": "2020-01-01", "end": "2020-01-31", "store": "/tmp/t",
         "crs": crs, "resolution": resolution}
    )
    return cube_geobox(spec)


def tile_containing(geobox, chunk, lon, lat):
    col, row = ~geobox.affine @ (lon, lat)
    return int(row // chunk), int(col // chunk)


def kept_ids(tiles):
    return {(t.iy, t.ix) for t in tiles}


# -- basic answers ------------------------------------------------------------------------------
def test_any_land_points_and_boxes():
    assert any_land(-72.5, 44.0, -72.4, 44.1).item()  # Vermont
    assert not any_land(-42.1, 22.0, -42.0, 22.1).item()  # open Atlantic
    got = any_land(np.array([-72.5, -42.1, np.nan]), np.array([44.0, 22.0, 0.0]),
                   np.array([-72.4, -42.0, 1.0]), np.array([44.1, 22.1, 1.0]))
    assert got.tolist() == [True, False, False]


def test_open_atlantic_tiles_dropped():
    gb = geobox_for((-45.0, 20.0, -40.0, 25.0))
    assert land_tiles(gb, 1200) == []


def test_vermont_bbox_is_all_land_and_edge_tiles_are_included():
    gb = geobox_for((-73.4, 42.7, -71.5, 45.0))
    tiles = land_tiles(gb, 1200)
    assert tiles == list(iter_tiles(gb, 1200))  # every tile, row-major, edge tiles clipped
    nty, ntx = tile_shape(gb, 1200)
    assert len(tiles) == nty * ntx
    last = tiles[-1]
    assert (last.y0 + last.ny, last.x0 + last.nx) == gb.shape.yx


@pytest.mark.parametrize(
    "name,lon,lat",
    [("bermuda", -64.78, 32.31), ("st-helena", -5.71, -15.96), ("pitcairn", -130.10, -25.07)],
)
def test_small_islands_are_kept(name, lon, lat):
    gb = geobox_for((lon - 1.5, lat - 1.5, lon + 1.5, lat + 1.5))
    kept = kept_ids(land_tiles(gb, 1200))
    assert tile_containing(gb, 1200, lon, lat) in kept, name
    nty, ntx = tile_shape(gb, 1200)
    assert len(kept) <= 9, f"{name}: {len(kept)} of {nty * ntx} tiles kept around a small island"


def test_coastal_tile_kept_ocean_tile_next_to_it_dropped():
    # Cabo da Roca (westernmost point of mainland Europe): a tile holding a sliver of coast.
    gb = geobox_for((-10.5, 38.5, -9.0, 39.0), resolution=0.001, )
    chunk = 64  # 0.064 degree tiles
    kept = kept_ids(land_tiles(gb, chunk))
    assert tile_containing(gb, chunk, -9.49, 38.78) in kept  # the cape itself
    assert tile_containing(gb, chunk, -10.45, 38.75) not in kept  # ~80 km out to sea


# -- conservative with respect to the mask ------------------------------------------------------
@pytest.mark.xdist_group("full-land-mask")
def test_never_drops_a_tile_with_land_cells_aegean():
    """Every tile holding a land cell of global-land-mask (checked cell by cell) is kept."""
    from global_land_mask import globe  # loads the full 1 GB mask: this test only

    gb = geobox_for(AEGEAN)
    chunk = 1200
    kept = kept_ids(land_tiles(gb, chunk))
    step = 1.0 / land.CELLS_PER_DEG
    with_land = set()
    all_tiles = list(iter_tiles(gb, chunk))
    for t in all_tiles:
        w, s, e, n = tile_geobox(gb, t).boundingbox
        lons = np.arange(np.floor(w / step) * step + step / 2, e, step)
        lats = np.arange(np.floor(s / step) * step + step / 2, n, step)
        lon2, lat2 = np.meshgrid(lons, np.clip(lats, -89.99, 89.99))
        if globe.is_land(lat2.ravel(), lon2.ravel()).any():
            with_land.add((t.iy, t.ix))
    assert with_land <= kept, f"dropped land tiles: {sorted(with_land - kept)[:5]}"
    extra = kept - with_land
    print(f"\nAegean: {len(all_tiles)} tiles, {len(with_land)} hold land cells, {len(kept)} kept, "
          f"{len(extra)} ocean tiles kept ({len(extra) / max(1, len(with_land)):.1%})")
    assert len(extra) <= 0.10 * len(with_land)  # islands everywhere: the worst case


@pytest.mark.xdist_group("full-land-mask")
def test_block_mask_matches_a_numpy_reduction_of_the_package_mask(tmp_path, monkeypatch):
    ocean = np.load(land._mask_path())["mask"]
    b = land.BLOCK
    expect = ~ocean.reshape(ocean.shape[0] // b, b, ocean.shape[1] // b, b).all(axis=(1, 3))
    del ocean
    monkeypatch.setenv(land.CACHE_ENV, str(tmp_path))
    land.block_mask.cache_clear()
    try:
        built = land.block_mask()  # streamed from the .npz, then written to the cache
        assert list(tmp_path.glob("land-blocks-*.npy"))
        land.block_mask.cache_clear()
        cached = land.block_mask()  # read back from the cache
    finally:
        land.block_mask.cache_clear()
    assert np.array_equal(built, expect)
    assert np.array_equal(cached, expect)
    assert not built.flags.writeable


# -- AOI ----------------------------------------------------------------------------------------
AOI = Polygon([(-55.0, -12.0), (-50.0, -14.5), (-53.0, -8.0)])  # inland Brazil (Mato Grosso / Para)


def test_aoi_filter_geographic_matches_brute_force():
    gb = geobox_for(AOI.bounds)
    chunk = 1200
    got = kept_ids(land_tiles(gb, chunk, region=AOI))
    expect = {(t.iy, t.ix) for t in iter_tiles(gb, chunk) if box(*tile_geobox(gb, t).boundingbox).intersects(AOI)}
    assert got == expect
    assert 0 < len(got) < np.prod(tile_shape(gb, chunk))


def test_aoi_filter_projected_matches_brute_force():
    gb = geobox_for(AOI.bounds, crs="EPSG:32722", resolution=30)
    chunk = 1200
    got = kept_ids(land_tiles(gb, chunk, region=AOI))
    expect = set()
    for t in iter_tiles(gb, chunk):
        footprint = tile_geobox(gb, t).extent.to_crs("EPSG:4326", resolution=500).geom  # 500 m steps
        if footprint.intersects(AOI):
            expect.add((t.iy, t.ix))
    assert got == expect
    assert 0 < len(got) < np.prod(tile_shape(gb, chunk))


def test_bbox_region_trims_the_corners_of_a_projected_grid():
    bbox = (-60.0, -20.0, -50.0, -10.0)
    gb = geobox_for(bbox, crs="EPSG:32721", resolution=30)
    everything = land_tiles(gb, 1200)
    inside = land_tiles(gb, 1200, region=box(*bbox))
    assert set(map(str, inside)) < set(map(str, everything))  # UTM grid's corners poke out of the bbox


# -- odd grids ------------------------------------------------------------------------------------
def test_projected_tiles_beyond_the_pole_or_off_the_earth_do_not_crash():
    beyond = GeoBox((2000, 2000), Affine(1000, 0, 0, 0, -1000, 12_000_000), "EPSG:32633")
    assert isinstance(land_tiles(beyond, 100), list)
    ortho = GeoBox((1500, 1500), Affine(10_000, 0, -7_500_000, 0, -10_000, 7_500_000),
                   "+proj=ortho +lat_0=0 +lon_0=0 +datum=WGS84")
    fp = tile_footprints(ortho, 100)
    off_earth = ~fp.usable
    assert off_earth.any()
    kept = select_tiles(ortho, 100).index
    assert not off_earth[kept].any()
    assert 0 < len(kept) < fp.size


def test_tile_holding_the_south_pole_is_land():
    gb = GeoBox((1000, 1000), Affine(1000, 0, -500_000, 0, -1000, 500_000), "EPSG:3031")
    fp = tile_footprints(gb, 100)
    pole = np.flatnonzero(fp.pole)
    assert pole.size == 1
    assert fp.south[pole[0]] == -90.0 and fp.west[pole[0]] == -180.0 and fp.east[pole[0]] == 180.0
    assert len(land_tiles(gb, 100)) == 100  # all Antarctica


def test_antimeridian_tiles_keep_their_land():
    # Taveuni (Fiji) straddles 180; UTM 60S tiles east of it cross the antimeridian.
    gb = GeoBox((400, 400), Affine(1000, 0, 700_000, 0, -1000, 8_250_000), "EPSG:32760")
    fp = tile_footprints(gb, 50)
    assert fp.crosses.any()
    kept = set(select_tiles(gb, 50).index.tolist())
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 32760, always_xy=True).transform(-179.95, -16.85)
    col, row = ~gb.affine @ (x, y)
    assert int(row // 50) * fp.shape[1] + int(col // 50) in kept
    i = np.flatnonzero(fp.crosses)[0]
    assert fp.west[i] > 0 > fp.east[i]  # west > east: the tile wraps across 180
    poly = fp.polygons(np.array([i]))[0]
    assert poly.geom_type == "MultiPolygon"


# -- speed ----------------------------------------------------------------------------------------
def _timed(gb, chunk=1200):
    t = time.perf_counter()
    tiles = land_tiles(gb, chunk)
    return tiles, time.perf_counter() - t


@pytest.mark.parametrize(
    "crs,res",
    [("EPSG:4326", 0.00027), ("EPSG:32723", 30.0), ("EPSG:6933", 30.0)],
)
def test_brazil_is_fast(crs, res):
    land.block_mask()  # the one-time load is measured by itself below
    gb = geobox_for(BRAZIL, crs=crs, resolution=res)
    tiles, dt = _timed(gb)
    nty, ntx = tile_shape(gb, 1200)
    print(f"\nBrazil {crs}: {nty * ntx} tiles, {len(tiles)} on land in {dt:.3f} s")
    assert 0.5 * nty * ntx < len(tiles) < nty * ntx
    assert dt < 2.0


def test_world_is_fast():
    t = time.perf_counter()
    land.block_mask()
    load = time.perf_counter() - t
    gb = geobox_for((-180.0, -90.0, 180.0, 90.0))
    tiles, dt = _timed(gb)
    nty, ntx = tile_shape(gb, 1200)
    print(f"\nworld 0.00027 deg: {nty * ntx} tiles, {len(tiles)} on land in {dt:.2f} s (mask load {load:.2f} s)")
    assert nty * ntx > 600_000
    assert 200_000 < len(tiles) < 240_000
    assert dt < 15.0


def test_block_mask_is_loaded_lazily():
    import subprocess
    import sys

    code = "import sys, cubeless.land; assert 'global_land_mask' not in sys.modules; " \
           "assert cubeless.land.block_mask.cache_info().currsize == 0"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert shapely.__version__  # shapely 2 vectorised API in use
