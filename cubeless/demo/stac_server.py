"""A throwaway local STAC API: ``rustac serve`` on a free loopback port, for demos and tests.

Example::

    with serve_scene_set(scene_set) as url:          # e.g. http://127.0.0.1:40123
        items = pystac_client.Client.open(url).search(bbox=..., datetime=...).item_collection()

What the rustac in-memory backend supports (rustac 0.9.x, checked by ``tests/unit/test_stac_server.py``):

* ``GET/POST /search`` with ``collections``, ``ids``, ``bbox``, ``intersects``, ``datetime``
  (instants and intervals) and ``limit``, with ``next`` links for paging (pystac-client follows
  them);  ``GET /collections/<id>/items`` likewise.
* **Not supported:** ``query`` and ``filter`` (CQL2). The server does not advertise them in
  ``/conformance``; a ``query`` or a ``filter`` with ``filter-lang`` returns **no items**, a
  ``filter`` without ``filter-lang`` is ignored. ``fields`` and ``sortby`` are ignored. A client
  that wants ``eo:cloud_cover`` limits must check conformance and filter the items itself.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

if TYPE_CHECKING:
    from .synthetic import SceneSet


class RustacNotFound(FileNotFoundError):
    """The ``rustac`` executable is not installed next to the running Python nor on PATH."""


class StacServerError(RuntimeError):
    """``rustac serve`` exited or did not answer in time; the message carries its log tail."""


@dataclass(frozen=True)
class ServerOptions:
    """How to start the server."""

    host: str = "127.0.0.1"  #: loopback only; the server is never exposed
    startup_timeout: float = 30.0  #: seconds to wait for the items endpoint to answer
    attempts: int = 3  #: tries with a fresh port if the chosen one was taken meanwhile


def find_rustac() -> Path:
    """The ``rustac`` executable: next to ``sys.executable`` (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / ("rustac.exe" if sys.platform == "win32" else "rustac")
    if here.is_file():
        return here
    found = shutil.which("rustac")
    if found:
        return Path(found)
    raise RustacNotFound(
        f"rustac is not installed (looked next to {sys.executable} and on PATH); "
        "install the dev extras: pip install -c constraints.txt -e '.[dev]'"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback URL we built)
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


@contextmanager
def serve_stac(
    collection: Mapping[str, Any],
    items: Iterable[Mapping[str, Any]],
    *,
    options: ServerOptions = ServerOptions(),
) -> Iterator[str]:
    """Serve one collection and its items; yields the API root URL (``http://127.0.0.1:<port>``).

    The documents are written to a temporary directory (``collection.json``, ``items.ndjson``)
    and loaded by ``rustac serve`` into memory. Returns once ``/collections/<id>/items``
    answers; stops the server (and removes the files) on exit.
    """
    exe = find_rustac()
    cid = str(collection["id"])
    item_list = [dict(i, collection=i.get("collection", cid)) for i in items]
    with tempfile.TemporaryDirectory(prefix="cubeless-stac-") as tmp:
        root = Path(tmp)
        (root / "collection.json").write_text(json.dumps(collection))
        (root / "items.ndjson").write_text("".join(json.dumps(i) + "\n" for i in item_list))
        last_error = ""
        for attempt in range(max(1, options.attempts)):
            port = free_port(options.host)
            url = f"http://{options.host}:{port}"
            log = root / f"rustac-{attempt}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [str(exe), "serve", "--addr", f"{options.host}:{port}",
                     str(root / "collection.json"), str(root / "items.ndjson")],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
                )
            try:
                ready = _wait_ready(proc, f"{url}/collections/{cid}/items?limit=1", options.startup_timeout)
                if ready:
                    yield url
                    return
                last_error = f"rustac serve exited with code {proc.returncode}: {_tail(log)}"
                if "in use" not in last_error:
                    break
            finally:
                _stop(proc)
        if not last_error:
            last_error = f"rustac serve did not answer within {options.startup_timeout:.0f} s"
        raise StacServerError(last_error)


def _wait_ready(proc: subprocess.Popen[bytes], probe: str, timeout: float) -> bool:
    """True once ``probe`` answers 200; False if the process died first; raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            status, _ = _get(probe, timeout=1.0)
            if status == 200:
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)
    raise StacServerError(f"rustac serve did not answer {probe} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def serve_scene_set(scene_set: "SceneSet", *, options: ServerOptions = ServerOptions()) -> Iterator[str]:
    """Serve a synthetic :class:`~cubeless.demo.synthetic.SceneSet`; yields the API root URL."""
    with serve_stac(scene_set.collection, scene_set.items, options=options) as url:
        yield url
