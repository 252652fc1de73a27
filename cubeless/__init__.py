"""cubeless: cloud-free median Sentinel-2 datacubes as Zarr v3, serverless or on one machine.

The data flows one way: spec -> plan -> tasks -> compose -> store -> commit.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cubeless")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["__version__"]
