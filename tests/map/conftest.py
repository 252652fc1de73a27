"""The demo cube, built once per session by the real pipeline (synthetic scenes, rustac, local runner)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_cube(tmp_path_factory) -> str:
    from rich.console import Console

    from cubeless.cli import _run_with_progress
    from cubeless.demo import run_demo

    out = tmp_path_factory.mktemp("map-demo")

    def run_spec(s):  # noqa: ANN001, ANN202
        return _run_with_progress(s, workers=1, timeout=90.0, retries=5, max_tasks=200_000)

    code = run_demo(out, workers=1, console=Console(file=open("/dev/null", "w")), run=run_spec)
    assert code == 0
    return str(Path(out) / "cube.zarr")
