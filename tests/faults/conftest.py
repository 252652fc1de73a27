"""Shared fixtures of the fault suite: the synthetic scene set, its STAC API, fault-free cubes.

The demo scene set is generated once per test run and each reference cube (a fault-free run of
a spec variant) is built once per test run, on first use, in a directory every xdist worker
shares (a file lock makes the other workers wait and reuse it). Each worker serves the scenes
with its own rustac instance. Tests carry ``@pytest.mark.xdist_group`` marks, but nothing here
relies on them (pytest 9.2 + xdist 3.8 ignore them: pytest-dev/pytest-xdist#1386).

Spec variants (all the demo cube: EPSG:4326, 0.00027 deg, chunk 256, a 638 x 266 grid of 3 x 2
tiles): ``may`` is May 2024 only (6 tasks), ``full`` is May-July 2024 (18 tasks; June is empty).

Storage formats: the scenarios that concern the store run once per format (``FORMATS``, the
``fmt`` parameter; :func:`store_for` names the store). An Icechunk cube is compared with the Zarr
reference by values and array metadata (:func:`faultkit.assert_identical`): both formats hold the
same arrays and pixel values for the same spec (tests/e2e/test_icechunk_run.py), so one fault-free
reference per variant serves both.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # faultkit must import here and in the runner's spawned workers
    sys.path.insert(0, str(HERE))

from cubeless.demo.specs import demo_spec  # noqa: E402
from cubeless.demo.stac_server import serve_scene_set  # noqa: E402
from cubeless.demo.synthetic import SceneSet, demo_config, generate, load_scene_set  # noqa: E402
from cubeless.runner import RunPolicy, run_local  # noqa: E402
from cubeless.spec import CubeSpec, parse_spec  # noqa: E402

#: The runner policy of the suite: 2 workers (the CI box has 2 cores), short backoff.
POLICY = RunPolicy(workers=2, timeout=120.0, retries=5, backoff=0.2)
#: The CLI of this checkout.
CUBELESS = str(Path(sys.executable).with_name("cubeless"))
#: The storage formats the store-facing scenarios run on (``@pytest.mark.parametrize("fmt", FORMATS)``).
FORMATS = ("zarr", "icechunk")


def store_for(directory: Path, fmt: str, stem: str = "cube") -> Path:
    """Where a scenario's cube of format ``fmt`` lives: ``<directory>/<stem>.zarr`` or ``.icechunk``."""
    return directory / f"{stem}.{fmt}"


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


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock (shared between the xdist workers of a run)."""
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A directory all xdist workers of this test run share (the run's base temp directory)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "faults-shared"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def synth(shared_dir: Path) -> SceneSet:
    """The demo scene set (20 scenes, two UTM zones, May and July 2024), generated once per run."""
    root = shared_dir / "synth"
    with exclusive(shared_dir / "synth.lock"):
        if (shared_dir / "synth.done").exists():
            return load_scene_set(root)
        shutil.rmtree(root, ignore_errors=True)
        scene_set = generate(demo_config(), root)
        (shared_dir / "synth.done").touch()
        return scene_set


@pytest.fixture(scope="session")
def stac(synth: SceneSet) -> Iterator[str]:
    """A rustac STAC API serving the scene set (asset hrefs are local paths)."""
    with serve_scene_set(synth) as url:
        yield url


@pytest.fixture(scope="session")
def reference(shared_dir: Path, stac: str) -> Callable[[str], Path]:
    """``reference(variant, fmt="zarr")``: the store of a fault-free run of that spec variant in
    that format (built once per test run, on first use; read-only for the tests: copy it to
    change it)."""

    def get(variant: str, fmt: str = "zarr") -> Path:
        name = f"reference-{variant}" if fmt == "zarr" else f"reference-{variant}-{fmt}"
        store = store_for(shared_dir / name, fmt)
        done = shared_dir / f"{name}.done"
        with exclusive(shared_dir / f"{name}.lock"):
            if not done.exists():
                shutil.rmtree(store.parent, ignore_errors=True)
                out = run_local(make_spec(stac, store, variant, format=fmt), policy=POLICY)
                assert out.complete and out.manifest is not None, out.manifest
                assert out.pool.retried == 0, "the fault-free reference run needed retries"
                done.touch()
        return store

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
                            env=env, start_new_session=True, preexec_fn=_sigint_default)


def _sigint_default() -> None:
    """Ctrl-C as from a terminal: a test session started in the background of a non-interactive
    shell (``cmd &``) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
