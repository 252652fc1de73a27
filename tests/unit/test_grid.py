import json

import numpy as np
import pytest

from cubeless.errors import SpecError
from cubeless.grid import (
    aoi_geometry,
    cube_geobox,
    geobox_of,
    grid_of,
    iter_tiles,
    load_aoi,
    tile_at,
    tile_geobox,
    tile_shape,
)
from cubeless.spec import parse_spec

BASE = dict(name="g", start="2020-01-01", end="2020-02-01", store="/tmp/x.zarr")


def spec(**kw):
    return parse_spec({**BASE, "bbox": [-73.43, 42.72, -71.47, 45.02], **kw})


def test_geographic_grid_is_anchored_to_resolution_multiples():
    gb = cube_geobox(spec())
    a = gb.affine
    assert a.a == pytest.approx(0.00027) and a.e == pytest.approx(-0.00027)
    assert (a.c / 0.00027) == pytest.approx(round(a.c / 0.00027))
    w, s, e, n = gb.extent.boundingbox
    assert w <= -73.43 and e >= -71.47 and s <= 42.72 and n >= 45.02


def test_edge_tiles_keep_their_true_offset():
    s = spec(chunk=1000)
    gb = cube_geobox(s)
    ny, nx = gb.shape.yx
    nty, ntx = tile_shape(gb, 1000)
    last = tile_at(gb, 1000, nty - 1, ntx - 1)
    # The seed demo derived the offset from the edge tile's own (smaller) shape: it must be i*chunk.
    assert (last.y0, last.x0) == ((nty - 1) * 1000, (ntx - 1) * 1000)
    assert (last.ny, last.nx) == (ny - last.y0, nx - last.x0)
    assert last.ny < 1000 and last.nx < 1000
    # The tile's GeoBox is exactly that window of the cube grid.
    tg = tile_geobox(gb, last)
    assert tg.shape.yx == (last.ny, last.nx)
    x, y = gb.affine * (last.x0, last.y0)
    assert tg.affine.c == pytest.approx(x) and tg.affine.f == pytest.approx(y)


def test_tiles_cover_the_grid_exactly_once():
    s = spec(chunk=1000)
    gb = cube_geobox(s)
    cover = np.zeros(gb.shape.yx, dtype=np.uint8)
    for t in iter_tiles(gb, 1000):
        cover[t.y0 : t.y0 + t.ny, t.x0 : t.x0 + t.nx] += 1
    assert (cover == 1).all()


def test_projected_grid_in_metres():
    s = spec(crs="EPSG:32618", resolution=30)
    gb = cube_geobox(s)
    assert gb.crs.epsg == 32618
    assert gb.affine.a == 30 and gb.affine.c % 30 == 0 and gb.affine.f % 30 == 0


def test_grid_round_trips_through_plain_numbers():
    s = spec(crs="EPSG:3035", resolution=20, bbox=[5.0, 45.0, 6.0, 46.0])
    gb = cube_geobox(s)
    g = grid_of(gb, s.crs)
    assert geobox_of(g) == gb
    assert json.loads(g.model_dump_json())["height"] == gb.shape.y


def test_tile_outside_grid_raises():
    gb = cube_geobox(spec())
    with pytest.raises(IndexError):
        tile_at(gb, 1200, 99, 0)


def test_aoi_file_gives_grid_of_its_bounds(tmp_path):
    poly = {"type": "Polygon", "coordinates": [[[10, 45], [10.5, 45], [10.5, 45.4], [10, 45]]]}
    p = tmp_path / "aoi.geojson"
    p.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": poly}))
    s = parse_spec({**BASE, "aoi": str(p)})
    gb = cube_geobox(s)
    w, so, e, n = gb.extent.boundingbox
    assert w <= 10 and e >= 10.5 and so <= 45 and n >= 45.4 and e - w < 0.51


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({"type": "Point", "coordinates": [1, 2]}, "only Polygon"),
        ({"type": "FeatureCollection", "features": []}, "no geometry"),
        ({"foo": 1}, "not GeoJSON"),
        ({"type": "Polygon", "coordinates": [[[170, 0], [-170, 0], [-170, 1], [170, 0]]]}, "antimeridian"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2], [0, 0]]]}, "no area"),
    ],
)
def test_bad_aoi_is_one_clear_line(doc, needle):
    with pytest.raises(SpecError) as e:
        aoi_geometry(doc, "a.geojson")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_aoi_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_aoi(str(tmp_path / "nope.geojson"))
