"""``cubeless serve ROOT``: the web map, XYZ tiles, TileJSON and point queries on loopback.

``ROOT`` is one cube or a folder (local or ``s3://``) holding cubes (``*.zarr`` up to two levels
down). Routes (``{cube}`` is a cube's id in the catalog; the routes without ``/cubes/{cube}`` use
the first cube):

* ``GET /``: the single-page map (MapLibre GL bundled into the package, no CDN);
* ``GET /api/cubes``: the catalog: every cube with its manifest (extent, bins, completeness, run);
* ``GET /cubes/{cube}/info``: variables, time steps, bounds, zooms, presets;
* ``GET /cubes/{cube}/tilejson.json?...``: TileJSON 3.0 whose tile URL carries the same query;
* ``GET /cubes/{cube}/tiles/{z}/{x}/{y}.png?time=&preset=&bands=&expression=&rescale=&colormap=``;
* ``GET /cubes/{cube}/point/{lon},{lat}``: every variable at that pixel over all time steps.

Every route is answered by :func:`respond` (a :class:`Request` in, a :class:`Response` out): the
stdlib threading HTTP server here (enough for one user on loopback) and the stack's tile function
(``lambdas/tiles.py``, behind a Lambda Function URL) both call it. The tile work is rio-tiler's
(:mod:`cubeless.tiles`).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from pydantic import ValidationError

from . import fs
from .errors import CubelessError, UserError
from .tiles import MapCube, MapError, NotFound, OutsideCube, TileQuery, open_map_cube

#: Files of the page, shipped in the package (``cubeless/web``); MapLibre GL is copied from npm
#: into ``cubeless/web/vendor`` by ``make setup``.
WEB = "web"
VENDOR_FILES = ("maplibre-gl.js", "maplibre-gl.css")
LOOPBACK = "127.0.0.1"
_MAX_DEPTH = 2


def _is_cube(url: str) -> bool:
    try:
        body = json.loads(fs.get_bytes(fs.join(url, "zarr.json")))
    except (FileNotFoundError, ValueError, IsADirectoryError, NotADirectoryError):
        return False
    return isinstance(body.get("attributes", {}).get("cubeless"), dict)


def _children(url: str) -> list[str]:
    """Names under a folder or prefix: on S3 a listing (objects and common prefixes); on disk the
    sub-folders (``fs.list_names`` lists a folder's files only, and a cube is a folder)."""
    if fs.is_remote(url):
        return fs.list_names(url)
    return [e.name for e in os.scandir(fs.local_path(url)) if e.is_dir()]


def find_cubes(root: str) -> dict[str, str]:
    """{id: store} of the cubes at or under ``root`` (the root itself, or ``*.zarr`` children)."""
    root = fs.normalize(root)
    if _is_cube(root):
        return {_cube_id(root): root}
    found: dict[str, str] = {}
    frontier = [root]
    for _ in range(_MAX_DEPTH):
        nxt = []
        for d in frontier:
            try:
                names = _children(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in sorted(names):
                if name.startswith(("_", ".")):
                    continue
                url = fs.join(d, name)
                if _is_cube(url):
                    rel = url[len(root):].strip("/")
                    found[rel.removesuffix(".zarr").replace("/", "~")] = url
                else:
                    nxt.append(url)
        frontier = nxt
    return found


def _cube_id(store: str) -> str:
    return store.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")


def _manifest_summary(store: str) -> dict[str, Any] | None:
    from .commit import read_manifest

    try:
        m = read_manifest(store)
    except Exception as exc:  # an unreadable manifest is shown, not fatal to the catalog
        return {"error": f"manifest unreadable: {exc}"}
    if m is None:
        return None
    return {
        "run_id": m.run_id,
        "complete": m.complete,
        "bins": [b.start.isoformat() for b in m.committed_bins],
        "bbox": list(m.spec.bbox) if m.spec.bbox else None,
        "aoi": m.spec.aoi,
        "crs": m.spec.crs,
        "resolution": m.spec.resolution,
        "bands": list(m.spec.bands),
        "tasks": {"planned": m.tasks_planned, "done": m.tasks_done, "failed": m.tasks_failed},
        "created": m.created.isoformat(),
    }


@dataclass
class Catalog:
    """The cubes under one root, opened on first use."""

    root: str

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, MapCube] = {}
        self.stores = find_cubes(self.root)

    def refresh(self) -> None:
        with self._lock:
            self.stores = find_cubes(self.root)
            self._open.clear()  # newly committed bins become visible

    def cube(self, cube_id: str | None) -> MapCube:
        if cube_id is None:
            if not self.stores:
                raise NotFound(f"no cube under {self.root}")
            cube_id = next(iter(self.stores))
        with self._lock:
            if cube_id not in self._open:
                if cube_id not in self.stores:
                    raise NotFound(f"no cube {cube_id!r} under {self.root}; the catalog has {sorted(self.stores)}")
                self._open[cube_id] = open_map_cube(self.stores[cube_id])
            return self._open[cube_id]

    def listing(self) -> list[dict[str, Any]]:
        return [{"id": cid, "store": store, "manifest": _manifest_summary(store)} for cid, store in self.stores.items()]


def _web_file(name: str) -> tuple[bytes, str] | None:
    if not re.fullmatch(r"(vendor/)?[A-Za-z0-9_.-]+", name) or ".." in name:
        return None
    f = resources.files("cubeless").joinpath(WEB, *name.split("/"))
    if not f.is_file():
        return None
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f.read_bytes(), ctype


def check_web_assets() -> None:
    """Refuse to serve a page that cannot load its map library."""
    for name in VENDOR_FILES:
        if _web_file(f"vendor/{name}") is None:
            raise UserError(f"cubeless/web/vendor/{name} is missing: run `make setup` (it copies MapLibre GL from npm)")


_TILE = re.compile(r"^(?:/cubes/(?P<cube>[^/]+))?/tiles/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)\.png$")
_POINT = re.compile(r"^(?:/cubes/(?P<cube>[^/]+))?/point/(?P<lon>[-+0-9.eE]+),(?P<lat>[-+0-9.eE]+)$")
_TILEJSON = re.compile(r"^(?:/cubes/(?P<cube>[^/]+))?/tilejson\.json$")
_INFO = re.compile(r"^(?:/cubes/(?P<cube>[^/]+))?/info$")


def _query(qs: str) -> TileQuery:
    params = dict(parse_qsl(qs, keep_blank_values=False))
    try:
        return TileQuery.model_validate(params)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "query"
        raise MapError(f"query parameter `{where}`: {e['msg']}") from None


@dataclass(frozen=True)
class Request:
    """One HTTP request, as the local server and the Lambda Function URL both see it."""

    method: str  #: GET or HEAD (anything else is refused)
    path: str  #: the path as sent (percent-encoded), without the query
    query: str = ""  #: the raw query string, without ``?``
    #: ``scheme://host[:port]`` the client reached: the prefix of the absolute tile URL in TileJSON
    origin: str = f"http://{LOOPBACK}"


@dataclass(frozen=True)
class Response:
    """What a request is answered with (for HEAD, the transport sends the headers only)."""

    status: int
    body: bytes
    content_type: str
    cache: str = "no-cache"

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": self.content_type,
            "Cache-Control": self.cache,
            "Access-Control-Allow-Origin": "*",
        }


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode(), "application/json")


def respond(catalog: Catalog, request: Request) -> Response:
    """The answer to one request: the routes of this module's docstring, errors as JSON
    ``{"error": ...}`` with their status. ``cubeless serve`` and the stack's tile function
    (``lambdas/tiles.py``) both answer through here."""
    if request.method not in ("GET", "HEAD"):
        return _json({"error": f"method {request.method} is not allowed; use GET"}, 405)
    try:
        return _route(catalog, unquote(request.path), request.query, request.origin)
    except MapError as exc:
        return _json({"error": str(exc)}, exc.status)
    except (CubelessError, ValueError) as exc:
        return _json({"error": str(exc)}, 400)
    except Exception as exc:  # pragma: no cover - a bug: say so, keep serving
        return _json({"error": f"{type(exc).__name__}: {exc}"}, 500)


def _route(catalog: Catalog, path: str, qs: str, origin: str) -> Response:
    if path in ("/", "/index.html"):
        body, _ = _web_file("index.html") or (b"", "")
        return Response(200, body, "text/html; charset=utf-8")
    if path.startswith("/static/"):
        hit = _web_file(path.removeprefix("/static/"))
        if hit is None:
            raise NotFound(f"no file {path}")
        return Response(200, hit[0], hit[1], cache="max-age=3600")
    if path == "/api/cubes":
        catalog.refresh()
        return _json({"root": catalog.root, "cubes": catalog.listing()})
    if m := _TILE.match(path):
        cube = catalog.cube(m["cube"])
        q = _query(qs)
        try:
            png = cube.render_tile(int(m["z"]), int(m["x"]), int(m["y"]), q)
        except OutsideCube:
            return Response(204, b"", "image/png")  # no pixel of the cube: an empty tile
        return Response(200, png, "image/png", cache="max-age=60")
    if m := _POINT.match(path):
        return _json(catalog.cube(m["cube"]).point(float(m["lon"]), float(m["lat"])))
    if m := _TILEJSON.match(path):
        cube = catalog.cube(m["cube"])
        q = _query(qs)
        cube.resolve(q)  # refuse a bad query here, not in every tile
        prefix = f"/cubes/{m['cube']}" if m["cube"] else ""
        tail = f"?{urlencode(dict(parse_qsl(qs)))}" if qs else ""
        return _json(cube.tilejson(f"{origin.rstrip('/')}{prefix}/tiles/{{z}}/{{x}}/{{y}}.png{tail}"))
    if m := _INFO.match(path):
        return _json(catalog.cube(m["cube"]).describe())
    raise NotFound(f"no route {path}")


def make_handler(answer: Callable[[Request], Response]) -> type[BaseHTTPRequestHandler]:
    """A stdlib request handler that answers GET and HEAD with ``answer``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "cubeless"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
            pass

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            host = self.headers.get("Host") or f"{LOOPBACK}:{self.server.server_address[1]}"
            try:
                r = answer(Request(self.command, url.path, url.query, origin=f"http://{host}"))
            except Exception as exc:  # pragma: no cover - a bug (or the proxy's credentials): say so, keep serving
                r = _json({"error": f"{type(exc).__name__}: {exc}"}, 500)
            try:
                self.send_response(r.status)
                for name, value in r.headers().items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


def make_http_server(answer: Callable[[Request], Response], port: int = 8000, host: str = LOOPBACK) -> ThreadingHTTPServer:
    """A ready (not yet serving) loopback server answering with ``answer``; ``port=0`` picks a free one."""
    try:
        server = ThreadingHTTPServer((host, port), make_handler(answer))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with --port") from None
    server.daemon_threads = True
    return server


def make_server(root: str, port: int = 8000, host: str = LOOPBACK) -> ThreadingHTTPServer:
    """A ready (not yet serving) server of the cubes under ``root``; ``port=0`` picks a free one."""
    check_web_assets()
    catalog = Catalog(root)
    if not catalog.stores:
        raise UserError(f"{root} holds no cubeless cube; give a cube (a *.zarr folder) or a folder of cubes")
    return make_http_server(lambda request: respond(catalog, request), port, host)


def run_server(server: ThreadingHTTPServer, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted, then close."""
    url = f"http://{LOOPBACK}:{server.server_address[1]}/"
    if on_ready:
        on_ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve(root: str, port: int, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the cubes under ``root`` until interrupted."""
    run_server(make_server(root, port), on_ready=on_ready)


def vendor_dir() -> Path:
    return Path(str(resources.files("cubeless").joinpath(WEB, "vendor")))
