import json

import pytest

from cubeless.errors import SpecError
from cubeless.spec import CubeSpec, load_spec, parse_spec

GOOD = {
    "name": "vermont",
    "stac_api": "https://earth-search.aws.element84.com/v1",
    "collection": "sentinel-2-c1-l2a",
    "bbox": [-73.43, 42.72, -71.47, 45.02],
    "start": "2020-01-01",
    "end": "2023-12-31",
    "interval": "month",
    "crs": "EPSG:4326",
    "resolution": 0.00027,
    "chunk": 1200,
    "bands": ["red", "green", "blue"],
    "mask": {"scl_exclude": [0, 1, 3, 8, 9, 10], "dilate": 0},
    "resampling": "bilinear",
    "max_cloud_cover": 100,
    "store": "./cubes/vermont.zarr",
}


def test_issue_example_parses_with_every_field():
    s = parse_spec(GOOD)
    assert isinstance(s, CubeSpec)
    assert s.bands == ("red", "green", "blue")
    assert s.mask.scl_exclude == (0, 1, 3, 8, 9, 10)
    assert s.dims == ("time", "latitude", "longitude")


def test_defaults_keep_water_and_snow_valid():
    s = parse_spec({k: GOOD[k] for k in ("name", "bbox", "start", "end", "store")})
    assert 6 not in s.mask.scl_exclude and 11 not in s.mask.scl_exclude
    assert s.interval == "month" and s.chunk == 1200 and s.resampling == "bilinear"


def test_projected_crs_uses_x_y_dims():
    s = parse_spec({**GOOD, "crs": "EPSG:32618", "resolution": 30})
    assert s.dims == ("time", "y", "x")


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in GOOD.items()))
    j = tmp_path / "c.json"
    j.write_text(json.dumps(GOOD))
    assert load_spec(y) == load_spec(j)


def test_canonical_json_is_stable():
    a = parse_spec(GOOD)
    b = parse_spec(dict(reversed(list(GOOD.items()))))
    assert a.canonical_json() == b.canonical_json()


@pytest.mark.parametrize(
    "patch,field,fix",
    [
        ({"bbox": [-71, 42, -73, 45]}, "bbox", "west"),
        ({"bbox": [-73, 45, -71, 42]}, "bbox", "south"),
        ({"bbox": [-73, 42, -71]}, "bbox", ""),
        ({"bbox": [-200, 42, -71, 45]}, "bbox", "-180..180"),
        ({"start": "2024-01-01"}, "spec", "swap"),
        ({"end": "2023-02-30"}, "end", ""),
        ({"bands": []}, "bands", "at least one"),
        ({"bands": ["red", "red"]}, "bands", "once"),
        ({"resolution": 0}, "resolution", ""),
        ({"resolution": -1}, "resolution", ""),
        ({"chunk": 8}, "chunk", ""),
        ({"chunk": 100000}, "chunk", ""),
        ({"crs": "EPSG:999999"}, "crs", "pyproj"),
        ({"interval": "fortnight"}, "interval", ""),
        ({"bandz": ["red"]}, "bandz", "did you mean `bands`?"),
        ({"colour": "red"}, "colour", "remove it or fix its spelling (fields: name, stac_api,"),
        ({"mask": {"scl_exlude": [0]}}, "mask.scl_exlude", "did you mean `scl_exclude`? (fields: scl_exclude, dilate, scl_band)"),
        ({"name": "Vermont Cube!"}, "name", "safe name"),
        ({"stac_api": "not a url"}, "stac_api", "http"),
        ({"mask": {"scl_exclude": [42]}}, "mask.scl_exclude", "0-11"),
        ({"max_cloud_cover": 150}, "max_cloud_cover", ""),
        ({"resolution": 30}, "spec", "degrees"),
        ({"aoi": "x.geojson"}, "spec", "exactly one"),
        ({"bands": ["red", "scl"]}, "spec", "mask band"),
    ],
)
def test_bad_specs_name_field_and_fix(patch, field, fix):
    with pytest.raises(SpecError) as e:
        parse_spec({**GOOD, **patch})
    msg = str(e.value)
    assert "\n" not in msg
    assert (f"`{field}`" in msg) if field != "spec" else msg.startswith("spec")
    assert fix in msg


@pytest.mark.parametrize("missing", ["name", "start", "end", "store"])
def test_missing_required_field(missing):
    doc = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(SpecError, match=f"`{missing}` is required"):
        parse_spec(doc)


@pytest.mark.parametrize(
    "content,needle",
    [("", "empty"), ("   \n", "empty"), ("[1, 2]", "object"), ("name: [unclosed", "not valid YAML"), ("42", "object")],
)
def test_bad_spec_files(tmp_path, content, needle):
    p = tmp_path / "s.yaml"
    p.write_text(content)
    with pytest.raises(SpecError, match=needle):
        load_spec(p)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_oversized_input_refused():
    with pytest.raises(SpecError, match="byte limit"):
        parse_spec(json.dumps({**GOOD, "pad": "x" * 300_000}))
