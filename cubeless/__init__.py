"""cubeless: cloud-free median Sentinel-2 datacubes as Zarr v3, serverless or on one machine.

The data flows one way: spec -> plan -> tasks -> compose -> store -> commit.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cubeless")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["__version__", "open"]


def open(store: str, version: str | None = None, *, raw: bool = False, **kwargs):  # noqa: A001, ANN003, ANN201
    """The committed cube at ``store`` as a lazy xarray Dataset (either format).

    ``version`` (Icechunk format only): a tag (a run id) or a snapshot id from ``cubeless history``;
    default main's tip. ``raw=True`` gives the stored uint16 DNs instead of reflectance.
    """
    from .store import open_cube

    return open_cube(store, raw=raw, version=version, **kwargs)
