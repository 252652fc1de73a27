"""The planner/commit layer: its recipe (fast) and, marked slow, the real build for arm64 and x86_64.

The template tests use a placeholder zip (tests/infra/conftest.py); these prove the real one builds
offline-capable from pip's manylinux wheels, fits Lambda's 250 MiB, and imports the handlers.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from layers import build as L

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_are_the_projects_plus_what_lambda_needs() -> None:
    reqs = L.requirements()
    for name in ("numpy", "zarr", "s3fs", "pydantic", "boto3", "aws-lambda-powertools", "aws-xray-sdk"):
        assert any(r.startswith(name) for r in reqs), name


def test_strip_rules() -> None:
    assert L._stripped(Path("pandas/tests/frame/test_api.py"))
    assert L._stripped(Path("numpy/__pycache__/x.cpython-312.pyc"))
    assert L._stripped(Path("numpy/_core/include/numpy/ndarraytypes.h"))
    assert not L._stripped(Path("numpy/testing/__init__.py"))
    assert not L._stripped(Path("zarr/core/array.py"))


def test_layer_key_follows_the_package_and_the_architecture() -> None:
    assert L.layer_key("arm64") == L.layer_key("arm64")
    assert L.layer_key("arm64") != L.layer_key("x86_64")
    assert L.deps_key("arm64") != L.deps_key("x86_64")


@pytest.mark.slow
def test_real_layer_builds_and_fits_lambda() -> None:
    layer = L.build_layer("arm64")
    handlers = sum(p.stat().st_size for p in (ROOT / "lambdas").glob("*.py"))
    print(f"\nlayer arm64: {layer.zip_path.name}: zipped {layer.zipped_bytes / 2**20:.1f} MiB, unzipped {layer.unzipped_mb:.1f} MiB")
    assert layer.unzipped_bytes + handlers < L.UNZIPPED_LIMIT
    with zipfile.ZipFile(layer.zip_path) as zf:
        names = zf.namelist()
    top = {n.split("/")[1] for n in names}
    assert all(n.startswith("python/") for n in names)
    assert {"cubeless", "numpy", "zarr", "pyproj", "shapely", "s3fs", "pystac_client", "aws_lambda_powertools", "aws_xray_sdk"} <= top
    assert not top & {"rasterio", "PIL", "bin"}  # worker-only packages stay in the image
    assert not [n for n in names if "/__pycache__/" in n or "/tests/" in n or n.endswith(".pyc")]
    assert any(n.endswith("aarch64-linux-gnu.so") for n in names)
    assert L.build_layer("arm64").zip_path == layer.zip_path  # cached: same zip, no rebuild


@pytest.mark.slow
def test_real_layer_imports_the_handlers(tmp_path: Path) -> None:
    """On this (x86_64) machine: the x86_64 layer alone, no site-packages, imports the zip handlers."""
    layer = L.build_layer("x86_64")
    with zipfile.ZipFile(layer.zip_path) as zf:
        zf.extractall(tmp_path / "opt")
    code = tmp_path / "task"
    (code / "lambdas").mkdir(parents=True)
    for p in (ROOT / "lambdas").glob("*.py"):
        (code / "lambdas" / p.name).write_bytes(p.read_bytes())
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import lambdas.planner, lambdas.commit, cubeless.plan, cubeless.search, cubeless.store, cubeless.land\n"
        "import importlib.metadata as m, cubeless\n"
        "assert cubeless.__file__.startswith(sys.argv[1]), cubeless.__file__\n"
        "print(m.version('cubeless'), m.version('zarr'), m.version('rasterio'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(tmp_path / "opt/python"), str(code)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from importlib.metadata import version

    assert out.stdout.split() == [version("cubeless"), version("zarr"), version("rasterio")]  # pinned like the venv
