"""Fault injection kit for tests/faults: real servers on 127.0.0.1 that misbehave on purpose.

* :class:`FileServer`: serves a directory over HTTP/1.1 with byte ranges (what GDAL's /vsicurl/
  needs) and per-file faults: answer a status N times (or forever), stall the first N requests.
* :class:`StacProxy`: forwards to a STAC API (rustac) and answers the first N matching requests
  with 429/503 + ``Retry-After``; rewrites the upstream root in bodies so paging and links come
  back through the proxy.
* :class:`Listener`: a bare TCP listener that only counts connections (proof that nothing was
  requested).
* :class:`FaultPolicy`: an :class:`~cubeless.hrefs.HrefPolicy` that carries a fault into the
  runner's worker processes (they receive the policy by pickle) and installs it there on first
  use; the fault itself (a chunk write that blocks) is then real, and so is the SIGKILL.
* cube comparison: :func:`cube_files`, :func:`assert_identical` (Zarr: bytes; Icechunk: values
  and array metadata read through a readonly session on ``main``).

This module is imported by the spawned worker processes too (through the pickled policy), so it
must stay importable without pytest fixtures.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from cubeless.hrefs import HrefPolicy

# ---------------------------------------------------------------------------------------------
# HTTP file server with faults
# ---------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What to do with requests for one path: ``status`` (e.g. 404, 500) or ``stall`` seconds."""

    status: int | None = None
    stall: float = 0.0
    times: int | None = 1  #: how many requests it applies to (None: forever)
    retry_after: str | None = None
    location: str | None = None  #: a ``Location`` header (with a 3xx status: a redirect)
    hits: int = 0  #: requests this fault answered
    released: threading.Event = field(default_factory=threading.Event)

    def take(self) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a killed client is expected
        pass


class FileServer:
    """Serve ``root`` on 127.0.0.1 with Range support; ``faults[path]`` misbehaves on purpose."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.faults: dict[str, Fault] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                server._serve(self, head=True)

            def do_GET(self) -> None:
                server._serve(self, head=False)

        self._httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for f in self.faults.values():
            f.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests_for(self, path: str, method: str = "GET") -> list[int]:
        with self._lock:
            return [s for m, p, s in self.log if p == path and m == method]

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))

    def _serve(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        method = "HEAD" if head else "GET"
        with self._lock:
            fault = self.faults.get(path)
            active = fault is not None and fault.take()
        if active:
            assert fault is not None
            if fault.stall:
                self._record(method, path, 0)
                fault.released.wait(fault.stall)  # the client is expected to give up (or be killed)
                h.close_connection = True
                return
            self._record(method, path, int(fault.status or 500))
            body = f"injected fault {fault.status}".encode()
            h.send_response(int(fault.status or 500))
            if fault.retry_after:
                h.send_header("Retry-After", fault.retry_after)
            if fault.location:
                h.send_header("Location", fault.location)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        target = (self.root / path.lstrip("/")).resolve()
        if not str(target).startswith(str(self.root)) or not target.is_file():
            self._record(method, path, 404)
            h.send_error(404)
            return
        data = target.read_bytes()
        size = len(data)
        rng = h.headers.get("Range")
        m = re.match(r"bytes=(\d*)-(\d*)$", rng or "")
        if m:
            a, b = m.group(1), m.group(2)
            if a == "":
                start, end = max(0, size - int(b)), size - 1
            else:
                start, end = int(a), min(size - 1, int(b) if b else size - 1)
            if start >= size:
                self._record(method, path, 416)
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            chunk = data[start : end + 1]
            self._record(method, path, 206)
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            chunk = data
            self._record(method, path, 200)
            h.send_response(200)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "image/tiff")
        h.send_header("Content-Length", str(len(chunk)))
        h.end_headers()
        if not head:
            try:
                h.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass


# ---------------------------------------------------------------------------------------------
# STAC proxy with throttling
# ---------------------------------------------------------------------------------------------


@dataclass
class Throttle:
    """Answer the first ``times`` requests matching ``method``/``path_prefix`` with ``status``."""

    status: int
    retry_after: str
    times: int
    method: str | None = None
    path_prefix: str = "/"
    hits: int = 0


class StacProxy:
    """A reverse proxy in front of a STAC API that throttles the first requests it sees."""

    def __init__(self, upstream: str, throttles: Iterable[Throttle] = ()) -> None:
        self.upstream = upstream.rstrip("/")
        self.throttles = list(throttles)
        self.log: list[tuple[float, str, str, int]] = []  # (time, method, path, status)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self, "GET")

            def do_POST(self) -> None:
                proxy._handle(self, "POST")

        self._httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StacProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        path = h.path
        with self._lock:
            hit = None
            for t in self.throttles:
                if t.hits < t.times and (t.method in (None, method)) and path.startswith(t.path_prefix):
                    t.hits += 1
                    hit = t
                    break
        if hit is not None:
            msg = json.dumps({"code": "Throttled", "description": f"injected {hit.status}"}).encode()
            with self._lock:
                self.log.append((time.monotonic(), method, path, hit.status))
            h.send_response(hit.status)
            h.send_header("Retry-After", hit.retry_after)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(msg)))
            h.end_headers()
            h.wfile.write(msg)
            return
        req = urllib.request.Request(self.upstream + path, data=body, method=method)
        for k in ("Content-Type", "Accept"):
            if h.headers.get(k):
                req.add_header(k, h.headers[k])
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback upstream
                status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as err:
            status, data, ctype = err.code, err.read(), err.headers.get("Content-Type", "application/json")
        data = data.replace(self.upstream.encode(), self.url.encode())
        with self._lock:
            self.log.append((time.monotonic(), method, path, status))
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


# ---------------------------------------------------------------------------------------------
# A listener that must never be contacted
# ---------------------------------------------------------------------------------------------


class Listener:
    """Accepts TCP connections on 127.0.0.1 and counts them (and closes them)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> "Listener":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


# ---------------------------------------------------------------------------------------------
# A fault carried into the worker processes
# ---------------------------------------------------------------------------------------------

_installed: set[str] = set()


@dataclass(frozen=True)
class FaultPolicy(HrefPolicy):
    """An href policy that, in whichever process first checks an href with it, installs a fault.

    ``block_chunk``: the path of one chunk file; the first process that writes it blocks forever
    right before the write (after writing whatever else it writes concurrently), and records its
    pid in ``<fault_dir>/blocked.pid``. The test then kills that process. Fires once overall.

    ``block_key``: the same for a chunk key written through an Icechunk session (e.g.
    ``count/c/0/0/0``); every key such a process has finished writing is appended to
    ``<fault_dir>/written.log`` (its chunk objects are then in the repository, unreferenced).
    """

    fault_dir: str = ""
    block_chunk: str = ""
    block_key: str = ""

    def check(self, href: object) -> None:
        if self.block_chunk and self.block_chunk not in _installed:
            _installed.add(self.block_chunk)
            _install_block(self.fault_dir, self.block_chunk)
        if self.block_key and "icechunk:" + self.block_key not in _installed:
            _installed.add("icechunk:" + self.block_key)
            _install_block_icechunk(self.fault_dir, self.block_key)
        super().check(href)


def _fire(fault_dir: str) -> bool:
    """Whether this process is the one the block fires in (once overall); records its pid."""
    try:
        fd = os.open(os.path.join(fault_dir, "fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    Path(fault_dir, "blocked.pid").write_text(str(os.getpid()))
    return True


def _install_block(fault_dir: str, chunk_path: str) -> None:
    import zarr.storage._local as local

    original = local._put

    def _put(path: Any, value: Any, exclusive: bool = False) -> int:
        if str(path) == chunk_path and _fire(fault_dir):
            while True:  # a hung write: only SIGKILL ends it
                time.sleep(3600)
        return original(path, value, exclusive=exclusive)

    local._put = _put


def _install_block_icechunk(fault_dir: str, key: str) -> None:
    import asyncio

    from icechunk.store import IcechunkStore

    original = IcechunkStore.set
    log = os.path.join(fault_dir, "written.log")

    async def set(self: Any, k: str, value: Any) -> None:
        if k == key and _fire(fault_dir):
            while True:  # a hung write (the event loop keeps serving the task's other writes)
                await asyncio.sleep(3600)
        await original(self, k, value)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {k}\n")

    IcechunkStore.set = set  # type: ignore[method-assign]


def execute_in_lockstep(task_jsons: list[str], barrier: Any, hrefs: HrefPolicy | None, out: Any) -> None:
    """Body of a duplicate-delivery process: execute each task right when the twin process does
    (a barrier before each), and report the chunk counts on ``out`` (a queue)."""
    from cubeless.execute import execute_task
    from cubeless.models import Task

    for tj in task_jsons:
        barrier.wait(timeout=300)
        result = execute_task(Task.model_validate_json(tj), policy=hrefs)
        out.put((os.getpid(), result.task_id, result.chunks_written))


def run_and_die_before_store_manifest(spec_json: str) -> None:
    """Body of a process that runs a cube and is SIGKILLed (by itself, at that exact point) when
    its commit is about to write the store's manifest: after the time steps were published."""
    import signal

    from cubeless import fs
    from cubeless.runner import RunPolicy, run_local
    from cubeless.spec import CubeSpec

    spec = CubeSpec.model_validate_json(spec_json)
    target = fs.join(fs.normalize(spec.store), "_cubeless/manifest.json")
    original = fs.put_bytes

    def put_bytes(url: str, data: bytes) -> None:
        if url == target:
            os.kill(os.getpid(), signal.SIGKILL)
        original(url, data)

    fs.put_bytes = put_bytes  # type: ignore[assignment]
    run_local(spec, policy=RunPolicy(workers=2, backoff=0.2))


# ---------------------------------------------------------------------------------------------
# Process helpers (/proc scanning, no psutil)
# ---------------------------------------------------------------------------------------------


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (scans /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if parent_of(int(d)) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# Cubes
# ---------------------------------------------------------------------------------------------


def cube_files(store: str | Path) -> dict[str, bytes]:
    """Every object of a cube outside ``_cubeless/`` (chunks and metadata), by relative path."""
    root = Path(store)
    out: dict[str, bytes] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith("_cubeless/"):
            out[rel] = p.read_bytes()
    return out


def chunk_files(store: str | Path) -> dict[str, bytes]:
    """Only the chunk objects (``<var>/c/...``)."""
    return {k: v for k, v in cube_files(store).items() if "/c/" in k}


def is_icechunk(store: str | Path) -> bool:
    from cubeless import icechunk_store as IC

    return IC.is_repo(str(store))


def assert_identical(store: str | Path, reference: str | Path, *, metadata: bool = True) -> None:
    """Byte-compare every chunk (and, with ``metadata``, every zarr.json but the root one, whose
    title is the spec name), then the array data through xarray.

    An Icechunk ``store`` (whose objects are content-addressed: their names and bytes differ from
    run to run) is compared by what a reader of ``main`` sees instead: :func:`assert_same_cube`.
    """
    import numpy as np
    import xarray as xr

    if is_icechunk(store):
        assert_same_cube(store, reference, metadata=metadata)
        return
    got = cube_files(store) if metadata else chunk_files(store)
    want = cube_files(reference) if metadata else chunk_files(reference)
    got.pop("zarr.json", None)
    want.pop("zarr.json", None)
    stray = sorted(k for k in got if ".partial" in k)
    assert not stray, f"temporary files left in the cube: {stray[:5]}"
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"objects missing {missing[:5]} / unexpected {extra[:5]}"
    differ = sorted(k for k in want if got[k] != want[k])
    assert not differ, f"{len(differ)} objects differ from the fault-free cube, e.g. {differ[:5]}"
    a = xr.open_zarr(store, chunks=None, mask_and_scale=False)
    b = xr.open_zarr(reference, chunks=None, mask_and_scale=False)
    assert a.sizes == b.sizes, f"sizes {dict(a.sizes)} != {dict(b.sizes)}"
    for name in b.variables:
        assert np.array_equal(a[name].values, b[name].values), f"variable {name} differs"


def assert_same_cube(store: str | Path, reference: str | Path, *, metadata: bool = True,
                     variables: Iterable[str] | None = None) -> None:
    """An Icechunk cube equals ``reference`` (a cube of either format) as a reader of ``main`` sees
    it: the same arrays with the same metadata (shape, chunks, codecs, attributes; with
    ``metadata``), the same values of every variable (or of ``variables``), and the cube's identity.
    And the run left nothing half done: no run branch is left, main's tip is tagged with the run
    that made it, no temporary object is left in the repository.

    (A Zarr reference also holds pyramid levels, subgroups the Icechunk format does not write yet;
    only the full-resolution arrays are compared.)
    """
    import numpy as np
    import zarr

    from cubeless import icechunk_store as IC
    from cubeless.store import open_cube

    root = Path(store)
    stray = sorted(str(p.relative_to(root)) for p in root.rglob("*.partial") if "_cubeless" not in p.parts)
    assert not stray, f"temporary files left in the repository: {stray[:5]}"
    repo = IC.open_repo(str(store))
    left = sorted(b for b in repo.list_branches() if b.startswith(IC.RUN_BRANCH_PREFIX))
    assert not left, f"run branches left behind: {left}"
    head = IC.history(str(store), limit=1)[0]
    assert head.run_id and head.run_id in head.tags, f"main's tip {head.id} is not a tagged run commit: {head}"

    got = IC.read_group(str(store))
    want = IC.read_group(str(reference)) if is_icechunk(reference) else zarr.open_group(str(reference), mode="r")
    names = sorted(want.array_keys()) if variables is None else sorted({*variables, "time", "time_bnds"})
    if variables is None:
        assert sorted(got.array_keys()) == names, f"arrays {sorted(got.array_keys())} != {names}"
    for key in ("identity", "fingerprint", "interval", "origin", "grid") if variables is None else ():
        assert got.attrs["cubeless"][key] == want.attrs["cubeless"][key], f"cube attribute {key} differs"
    if metadata:
        for name in names:
            a, b = got[name].metadata.to_dict(), want[name].metadata.to_dict()
            assert a == b, f"array {name}: metadata differs: {({k: (a.get(k), b.get(k)) for k in {*a, *b} if a.get(k) != b.get(k)})}"

    a = open_cube(str(store), raw=True)
    b = open_cube(str(reference), raw=True)
    assert a.sizes["time"] == b.sizes["time"], f"sizes {dict(a.sizes)} != {dict(b.sizes)}"
    for name in b.variables if variables is None else names:
        assert np.array_equal(a[name].values, b[name].values), f"variable {name} differs"


def markers(store: str | Path, kind: str, run_id: str = "*") -> dict[str, Path]:
    """``done`` or ``failed`` markers of a run (default: of every run) in a store: task id -> path."""
    out: dict[str, Path] = {}
    for p in Path(store, "_cubeless", "runs").glob(f"{run_id}/{kind}/*.json"):
        out[p.stem] = p
    return out


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def http_items(items: Iterable[Mapping[str, Any]], root: Path, base_url: str) -> list[dict[str, Any]]:
    """Items whose asset hrefs under ``root`` are served from ``base_url`` instead."""
    from cubeless.demo.synthetic import rewrite_hrefs

    return [rewrite_hrefs(i, str(Path(root).resolve()), base_url) for i in items]


def url_path(href: str) -> str:
    """The path part of an http href."""
    return "/" + href.split("://", 1)[1].split("/", 1)[1]


__all__ = [
    "Fault", "FileServer", "Throttle", "StacProxy", "Listener", "FaultPolicy", "children_of", "parent_of",
    "alive", "wait_for", "cube_files", "chunk_files", "assert_identical", "assert_same_cube", "is_icechunk", "markers", "read_json",
    "http_items", "url_path", "execute_in_lockstep", "run_and_die_before_store_manifest",
]
