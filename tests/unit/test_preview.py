"""write_preview: a true-colour PNG of one time step of any (time, y, x) red/green/blue Zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from cubeless.demo.preview import PreviewOptions, preview_array, rgb_array, write_preview

NY, NX = 37, 53


def _cube(path: Path, dims: tuple[str, str, str], *, north_up: bool = True) -> str:
    """A tiny 3-step cube: a vegetation field, a bright 'snow' patch in the north rows, a no-data
    corner, and an empty (all-zero) last step."""
    rng = np.random.default_rng(0)
    t, ydim, xdim = dims
    base = {"red": 1300, "green": 1600, "blue": 1250}
    data = {}
    for name, v in base.items():
        a = (v + rng.integers(-200, 200, size=(3, NY, NX))).astype(np.uint16)
        a[:, :2, :10] = 9000  # a small bright patch in the north-west (rows 0-1 when north-up)
        a[:, -6:, -8:] = 0  # no data in the south-east corner
        a[2] = 0  # an empty bin
        data[name] = a
    ys = 46.4 - 0.001 * (np.arange(NY) + 0.5) if ydim == "latitude" else 5_140_000 - 20.0 * (np.arange(NY) + 0.5)
    xs = 5.9 + 0.001 * (np.arange(NX) + 0.5) if xdim == "longitude" else 270_000 + 20.0 * (np.arange(NX) + 0.5)
    if not north_up:
        ys = ys[::-1]
        data = {k: v[:, ::-1, :] for k, v in data.items()}
    ds = xr.Dataset(
        {k: (dims, v) for k, v in data.items()},
        coords={t: np.array(["2024-05-01", "2024-06-01", "2024-07-01"], dtype="datetime64[ns]"), ydim: ys, xdim: xs},
    )
    store = str(path / f"cube-{ydim}-{north_up}.zarr")
    ds.to_zarr(store, zarr_format=3, consolidated=True)
    return store


@pytest.mark.parametrize("dims", [("time", "y", "x"), ("time", "latitude", "longitude")])
def test_writes_png_of_the_cube_size(tmp_path: Path, dims: tuple[str, str, str]) -> None:
    store = _cube(tmp_path, dims)
    out = write_preview(store, 0, tmp_path / "p" / "step0.png")
    assert out.is_file() and out.stat().st_size > 500
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (NX, NY) and img.mode == "RGBA"
    a = np.asarray(img)
    assert len(np.unique(a[..., :3].reshape(-1, 3), axis=0)) > 50  # real texture, not a flat image
    assert (a[-6:, -8:, 3] == 0).all() and (a[:-6, :, 3] == 255).all()  # no data is transparent
    assert a[:2, :10, :3].mean() > 250  # the bright patch is on top: north up
    assert 30 < a[10:-10, :40, 1].mean() < 220  # the field is stretched into mid-range


def test_label_and_index_select_the_same_step(tmp_path: Path) -> None:
    store = _cube(tmp_path, ("time", "y", "x"))
    by_index = preview_array(store, 1)
    assert np.array_equal(by_index, preview_array(store, "2024-06"))
    assert np.array_equal(by_index, preview_array(store, "2024-06-01"))
    assert np.array_equal(by_index, preview_array(store, "1"))  # from a command line
    assert np.array_equal(preview_array(store, -1), preview_array(store, 2))
    with pytest.raises(KeyError, match="2024-05-01"):
        preview_array(store, "2023-01")
    with pytest.raises(IndexError):
        preview_array(store, 3)


def test_empty_step_is_transparent(tmp_path: Path) -> None:
    store = _cube(tmp_path, ("time", "latitude", "longitude"))
    out = write_preview(store, "2024-07", tmp_path / "empty.png")
    a = np.asarray(Image.open(out))
    assert a.shape == (NY, NX, 4) and (a[..., 3] == 0).all()


def test_south_up_cube_is_flipped(tmp_path: Path) -> None:
    store = _cube(tmp_path, ("time", "latitude", "longitude"), north_up=False)
    a = preview_array(store, 0)
    assert a[:2, :10, :3].mean() > 250 and a[-2:, :10, :3].mean() < 250


def test_stretch_ignores_zeros_and_uses_percentiles() -> None:
    r = np.array([[0, 1000, 2000], [3000, 4000, 5000]], dtype=np.uint16)
    opts = PreviewOptions(percentiles=(0, 100), transparent_nodata=False)
    img = rgb_array([r, r, r], opts)
    assert img.shape == (2, 3, 3)
    assert img[0, 0].tolist() == [0, 0, 0]  # no data stays black
    assert img[0, 1, 0] == 0 and img[1, 2, 0] == 255  # min/max of the non-zero values
    assert img[1, 0, 0] == round(2000 / 4000 * 255)
    # max_size downsamples
    big = np.full((400, 900), 1500, np.uint16)
    assert rgb_array([big, big, big], PreviewOptions(max_size=300)).shape == (134, 300, 4)


def test_missing_variable_is_a_clear_error(tmp_path: Path) -> None:
    store = _cube(tmp_path, ("time", "y", "x"))
    with pytest.raises(KeyError, match="nir"):
        preview_array(store, 0, options=PreviewOptions(bands=("nir", "red", "green")))
