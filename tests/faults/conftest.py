"""Shared fixtures of the fault suite: the synthetic scene set, its STAC API, fault-free cubes.

Everything is session-scoped (per xdist worker): the demo scene set is generated once, served by
one rustac instance, and each reference cube (a fault-free run of a spec variant) is built once,
on first use. Tests that share them carry ``@pytest.mark.xdist_group`` so ``--dist loadgroup``
keeps them on one worker.

Spec variants (all the demo cube: EPSG:4326, 0.00027 deg, chunk 256, a 638 x 266 grid of 3 x 2
tiles): ``may`` is May 2024 only (6 tasks), ``full`` is May-July 2024 (18 tasks; June is empty).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # faultkit must import here and in the runner's spawned workers
    sys.path.insert(0, str(HERE))

from cubeless.demo.specs import demo_spec  # noqa: E402
from cubeless.demo.stac_server import serve_scene_set  # noqa: E402
from cubeless.demo.synthetic import SceneSet, demo_config, generate  # noqa: E402
from cubeless.runner import RunPolicy, run_local  # noqa: E402
from cubeless.spec import CubeSpec, parse_spec  # noqa: E402

#: The runner policy of the suite: 2 workers (the CI box has 2 cores), short backoff.
POLICY = RunPolicy(workers=2, timeout=120.0, retries=5, backoff=0.2)
#: The CLI of this checkout.
CUBELESS = str(Path(sys.executable).with_name("cubeless"))


def spec_doc(stac_url: str, store: str | Path, variant: str = "may", **override: Any) -> dict[str, Any]:
    """The demo spec for ``variant`` (``may`` or ``full``), with ``override`` applied."""
    doc = demo_spec(stac_url, str(store), name=f"faults-{variant}")
    if variant == "may":
        doc["end"] = "2024-05-31"
    elif variant != "full":
        raise ValueError(variant)
    doc.update(override)
    return doc


def make_spec(stac_url: str, store: str | Path, variant: str = "may", **override: Any) -> CubeSpec:
    return parse_spec(spec_doc(stac_url, store, variant, **override))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SceneSet:
    """The demo scene set (20 scenes, two UTM zones, May and July 2024)."""
    return generate(demo_config(), tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def stac(synth: SceneSet) -> Iterator[str]:
    """A rustac STAC API serving the scene set (asset hrefs are local paths)."""
    with serve_scene_set(synth) as url:
        yield url


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, stac: str) -> Callable[[str], Path]:
    """``reference(variant)``: the store of a fault-free run of that spec variant (built once)."""
    built: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in built:
            store = tmp_path_factory.mktemp(f"reference-{variant}") / "cube.zarr"
            out = run_local(make_spec(stac, store, variant), policy=POLICY)
            assert out.complete and out.manifest is not None, out.manifest
            assert out.pool.retried == 0, "the fault-free reference run needed retries"
            built[variant] = store
        return built[variant]

    return get


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    """Environment for CLI subprocesses (no colour codes, default width, this venv first on PATH)."""
    e = dict(os.environ)
    e.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    e.pop("COLUMNS", None)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    """Write a spec document as YAML; returns the path."""
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> "subprocess.CompletedProcess[str]":
    """Run the real `cubeless` command line."""
    return subprocess.run([CUBELESS, *args], capture_output=True, text=True, env=env, timeout=timeout)


def cli_popen(*args: str, env: dict[str, str]) -> "subprocess.Popen[str]":
    """Start `cubeless` in its own session (so the test can kill it and its workers at once)."""
    return subprocess.Popen([CUBELESS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
