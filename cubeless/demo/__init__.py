"""Demo and test support: synthetic Sentinel-2 scenes with known truth
(:mod:`~cubeless.demo.synthetic`), a local STAC API (:mod:`~cubeless.demo.stac_server`), the demo
cube specs (:mod:`~cubeless.demo.specs`) and PNG previews (:mod:`~cubeless.demo.preview`).

Nothing runs and nothing heavy is imported at import time. ``run_demo`` (used by ``cubeless demo``)
is resolved lazily from :mod:`cubeless.demo.runner`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_demo"]


def __getattr__(name: str) -> Any:
    if name == "run_demo":
        try:
            from .runner import run_demo
        except ModuleNotFoundError as exc:  # pragma: no cover - until the runner lands
            if exc.name != f"{__name__}.runner":
                raise
            raise AttributeError("cubeless.demo.run_demo needs cubeless/demo/runner.py, which is not installed") from None
        return run_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
