"""Tile rendering against the cube: a tile's pixels are the cube's values on the tile grid."""

from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
from PIL import Image
from pyproj import Transformer

from cubeless.store import open_cube
from cubeless.tiles import MapError, TileQuery, open_map_cube

pytestmark = pytest.mark.xdist_group("map")  # one worker builds the demo cube once
TMS = morecantile.tms.get("WebMercatorQuad")


def _cube_on_tile(store: str, var: str, t: int, tile: morecantile.Tile) -> np.ndarray:
    """The cube's values at every tile pixel centre (floor of the pixel's position in the cube grid)."""
    ds = open_cube(store, raw=True)
    grid = ds.attrs["cubeless"]["grid"]
    a, _, c, _, e, f = grid["transform"]
    b = TMS.xy_bounds(tile)
    n = 256
    xs = b.left + (np.arange(n) + 0.5) * (b.right - b.left) / n
    ys = b.top - (np.arange(n) + 0.5) * (b.top - b.bottom) / n
    X, Y = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs("EPSG:3857", grid["crs"], always_xy=True).transform(X, Y)
    col = np.floor((lon - c) / a).astype(int)
    row = np.floor((lat - f) / e).astype(int)
    inside = (row >= 0) & (row < grid["height"]) & (col >= 0) & (col < grid["width"])
    data = np.asarray(ds[var].isel(time=t).values)
    out = np.zeros((n, n), dtype=np.int64)
    out[inside] = data[row[inside], col[inside]]
    return out


@pytest.mark.e2e
def test_tile_pixels_are_the_cube_on_the_tile_grid(demo_cube: str) -> None:
    cube = open_map_cube(demo_cube)
    w, s, e, n = cube.lonlat_bounds()
    tile = TMS.tile((w + e) / 2, (s + n) / 2, 13)
    img = cube.tile_data(tile.z, tile.x, tile.y, 0, ("red", "green", "blue", "count"))
    for i, var in enumerate(("red", "green", "blue", "count")):
        want = _cube_on_tile(demo_cube, var, 0, tile)
        got = np.where(img.array.mask[i], 0, img.array.data[i]).astype(np.int64)
        assert (want > 0).mean() > 0.5  # the tile is mostly over data
        # nearest resampling: equal except where a pixel centre sits on a cube pixel edge
        assert (np.abs(got - want) <= 1).mean() > 0.99, var


@pytest.mark.e2e
def test_rendered_png_is_the_stretch_of_the_cube_within_1_dn(demo_cube: str) -> None:
    cube = open_map_cube(demo_cube)
    w, s, e, n = cube.lonlat_bounds()
    tile = TMS.tile((w + e) / 2, (s + n) / 2, 13)
    png = Image.open(io.BytesIO(cube.render_tile(tile.z, tile.x, tile.y, TileQuery(preset="truecolor", time=0))))
    assert png.mode == "RGBA" and png.size == (256, 256)
    rgba = np.asarray(png).astype(np.int64)
    lo, hi = 1000.0, 3000.0
    valid = np.ones((256, 256), bool)
    for i, var in enumerate(("red", "green", "blue")):
        dn = _cube_on_tile(demo_cube, var, 0, tile)
        valid &= dn > 0
        want = np.clip(np.round((dn - lo) * 255 / (hi - lo)), 0, 255)
        close = np.abs(rgba[..., i] - want) <= 1
        assert close[dn > 0].mean() > 0.99, var
    assert (rgba[..., 3][valid] == 255).mean() > 0.99 and (rgba[..., 3][~valid] == 0).mean() > 0.99


@pytest.mark.e2e
def test_time_steps_render_differently_and_the_empty_bin_is_transparent(demo_cube: str) -> None:
    cube = open_map_cube(demo_cube)
    w, s, e, n = cube.lonlat_bounds()
    tile = TMS.tile((w + e) / 2, (s + n) / 2, 13)
    a = np.asarray(Image.open(io.BytesIO(cube.render_tile(tile.z, tile.x, tile.y, TileQuery(time=0)))))
    b = np.asarray(Image.open(io.BytesIO(cube.render_tile(tile.z, tile.x, tile.y, TileQuery(time=2)))))
    june = np.asarray(Image.open(io.BytesIO(cube.render_tile(tile.z, tile.x, tile.y, TileQuery(time=1)))))
    assert (a[..., :3] != b[..., :3]).any(axis=-1).mean() > 0.3
    assert (june[..., 3] == 0).all()  # June has no scenes: no data anywhere


@pytest.mark.e2e
def test_point_is_the_cube_pixel_over_time(demo_cube: str) -> None:
    cube = open_map_cube(demo_cube)
    w, s, e, n = cube.lonlat_bounds()
    lon, lat = (w + e) / 2, (s + n) / 2
    p = cube.point(lon, lat)
    ds = open_cube(demo_cube, raw=True)
    a, _, c, _, e_, f = ds.attrs["cubeless"]["grid"]["transform"]
    row, col = int((lat - f) // e_), int((lon - c) // a)
    for var in ("red", "green", "blue", "count"):
        assert p["values"][var] == [int(v) for v in ds[var][:, row, col].values]
    assert p["times"] == ["2024-05-01", "2024-06-01", "2024-07-01"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "query, needle",
    [
        (TileQuery(bands=("nir",)), "no variable 'nir'"),
        (TileQuery(bands=("red", "green")), "give 1 band"),
        (TileQuery(bands=("red",), rescale=(5, 1)), "maximum must exceed"),
        (TileQuery(bands=("red",), colormap="nope"), "colormap 'nope' is unknown"),
        (TileQuery(expression="(a-b)"), "names no variable"),
    ],
)
def test_bad_tile_queries_say_what_to_fix(demo_cube: str, query: TileQuery, needle: str) -> None:
    with pytest.raises(MapError, match=needle.replace("(", r"\(")):
        open_map_cube(demo_cube).resolve(query)
