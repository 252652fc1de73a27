"""A synthetic Earth Search v1 STAC API, built at run time from the real item documents.

Earth Search runs behind API Gateway + Lambda: a ``/search`` answer whose body exceeds 6 MB is
answered **502**; pages are walked with a ``next`` token (``"<datetime>,<id>,<collection>"``) in
a POST body; the STAC ``fields`` extension and ``query`` (``eo:cloud_cover``) are declared and
applied. This server reproduces those behaviours at Earth Search's scale, for tests and ``make
bench``, without copying the real items into the repository: it reads the ``sentinel-2-c1-l2a``
documents of ``../shared/real-items/`` (see :func:`real_items_dir`) and uses them as templates.

The synthetic world is a lon/lat grid of tiles (:data:`TILE_DEG` degrees, about one MGRS tile),
each revisited every :data:`REVISIT_DAYS` days at about 10:30 local solar time, alternating
S2A/S2B. Every item is one real template (chosen by tile) with its id, datetime, footprint, bbox,
``proj:epsg`` (the tile's UTM zone), per-asset ``proj:transform`` (the tile's UTM corner),
``grid:code``/``mgrs:*``, asset hrefs and ``eo:cloud_cover`` replaced, so an item is the size of a
real one (~17.6 KB of compact JSON). The Brazil-year query (bbox ``[-74, -34, -34.7, 5.3]``, 2024)
matches about 140,000 items, as on Earth Search (~137,000).

Run ``python -m cubeless.demo.earth_search [--port N] [--latency S]``: it prints its URL on the
first line of stdout and serves until stdin closes; :func:`serve_earth_search` does that in a
subprocess (so the server's CPU and memory are not the client's).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np

COLLECTION = "sentinel-2-c1-l2a"
#: Edge of one synthetic tile, degrees (an MGRS tile is 109.8 km, about 1 degree at the equator).
TILE_DEG = 0.9
#: Days between two acquisitions of one tile (Sentinel-2A + 2B).
REVISIT_DAYS = 5
#: The API Gateway + Lambda response limit: a bigger body is answered 502.
MAX_BODY_BYTES = 6 * 1024 * 1024
#: The largest ``limit`` the server honours.
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 10
EPOCH = datetime(2015, 6, 27, tzinfo=timezone.utc)
FIELDS_CONFORMANCE = "https://api.stacspec.org/v1.0.0/item-search#fields"
QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0/item-search#query"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    FIELDS_CONFORMANCE,
    QUERY_CONFORMANCE,
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # MGRS letters (no I, O)
_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # MGRS latitude bands, 8 degrees each from -80


def real_items_dir() -> Path | None:
    """``$CUBELESS_REAL_ITEMS``, else ``../shared/real-items`` beside the repository; None if absent."""
    env = os.environ.get("CUBELESS_REAL_ITEMS")
    cands = [Path(env)] if env else []
    root = Path(__file__).resolve().parents[2]
    cands += [root.parent / "shared" / "real-items", Path("/work/shared/real-items")]
    for c in cands:
        if (c / COLLECTION).is_dir():
            return c
    return None


def load_templates(root: Path) -> list[dict[str, Any]]:
    """The real ``sentinel-2-c1-l2a`` item documents (sorted by file name)."""
    out = []
    for p in sorted((root / COLLECTION).glob("*/*.json")):
        if p.name.startswith("_"):
            continue
        doc = json.loads(p.read_text())
        if doc.get("type") == "Feature":
            out.append(doc)
    if not out:
        raise FileNotFoundError(f"no {COLLECTION} items under {root}")
    return out


# ------------------------------------------------------------------------------------------------
# Templates: one real item serialized once with placeholders, filled per synthetic item
# ------------------------------------------------------------------------------------------------
_RAW = ("geometry", "bbox", "epsg", "centroid", "zone", "cloud", "x10", "x20", "x60", "y")
_TOKEN = re.compile(r"@@(\w+)@@")


def _mark(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a real item with placeholders where a synthetic item differs."""
    doc = json.loads(json.dumps(doc))
    iid = doc["id"]
    p = doc["properties"]
    zone, band, sq = p["mgrs:utm_zone"], p["mgrs:latitude_band"], p["mgrs:grid_square"]
    dt = doc["properties"]["datetime"]
    d = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    old_path = f"/{zone}/{band}/{sq}/{d.year}/{d.month}/"
    old_tile = f"{zone}{band}{sq}"
    old_day = d.strftime("%Y%m%d")

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            return (v.replace(iid, "@@id@@").replace(old_path, "/@@path@@/").replace(old_tile, "@@tile@@")
                    .replace(old_day, "@@day@@"))
        return v

    doc = walk(doc)
    p = doc["properties"]
    p["datetime"] = "@@datetime@@"
    p["eo:cloud_cover"] = "@@cloud@@"
    p["proj:epsg"] = "@@epsg@@"
    p["proj:centroid"] = "@@centroid@@"
    p["mgrs:utm_zone"] = "@@zone@@"
    p["mgrs:latitude_band"] = "@@band@@"
    p["mgrs:grid_square"] = "@@sq@@"
    p["grid:code"] = "MGRS-@@tile@@"
    p["platform"] = "@@platform@@"
    doc["geometry"] = "@@geometry@@"
    doc["bbox"] = "@@bbox@@"
    for a in doc["assets"].values():
        tr = a.get("proj:transform")
        if isinstance(tr, list) and len(tr) >= 6:
            res = int(abs(tr[0]))
            if res in (10, 20, 60):
                a["proj:transform"] = [tr[0], tr[1], f"@@x{res}@@", tr[3], tr[4], "@@y@@"]
    return doc


def _apply_fields(doc: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    """The STAC ``fields`` extension on one item dict (dotted paths; include, then exclude).

    As stac-server does: with an ``include`` list the item keeps ``id``, ``type``, ``stac_version``,
    ``collection`` plus the included paths; ``exclude`` then removes paths.
    """
    if not fields:
        return doc
    inc = [f for f in fields.get("include") or [] if isinstance(f, str)]
    exc = [f for f in fields.get("exclude") or [] if isinstance(f, str)]
    if inc:
        out: dict[str, Any] = {k: doc[k] for k in ("type", "stac_version", "id", "collection") if k in doc}
        for path in inc:
            _copy_path(doc, out, path.split("."))
        doc = out
    else:
        doc = json.loads(json.dumps(doc))
    for path in exc:
        _drop_path(doc, path.split("."))
    return doc


def _copy_path(src: Any, dst: dict[str, Any], keys: list[str]) -> None:
    k = keys[0]
    if not isinstance(src, dict) or k not in src:
        return
    if len(keys) == 1:
        dst[k] = json.loads(json.dumps(src[k]))
        return
    sub = dst.setdefault(k, {})
    if isinstance(sub, dict):
        _copy_path(src[k], sub, keys[1:])


def _drop_path(doc: Any, keys: list[str]) -> None:
    if not isinstance(doc, dict):
        return
    if len(keys) == 1:
        doc.pop(keys[0], None)
    elif keys[0] in doc:
        _drop_path(doc[keys[0]], keys[1:])


class _Format:
    """A marked template serialized once: a list of literal parts and placeholder names."""

    def __init__(self, marked: dict[str, Any], fields: dict[str, Any] | None) -> None:
        text = json.dumps(_apply_fields(marked, fields), separators=(",", ":"))
        for name in _RAW:
            text = text.replace(f'"@@{name}@@"', f"@@{name}@@")
        self.parts = _TOKEN.split(text)  # literal, name, literal, name, ...

    def render(self, values: dict[str, str]) -> str:
        parts = self.parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(values[parts[i]])
            out.append(parts[i + 1])
        return "".join(out)


# ------------------------------------------------------------------------------------------------
# The synthetic world
# ------------------------------------------------------------------------------------------------
class World:
    """Tiles and acquisition times of the synthetic catalog, and the item text of each."""

    def __init__(self, templates: list[dict[str, Any]]) -> None:
        self.templates = templates
        self.marked = [_mark(t) for t in templates]
        self._formats: dict[str, list[_Format]] = {}
        self._lock = threading.Lock()
        self._utm: dict[int, tuple[float, float]] = {}

    # tiles ---------------------------------------------------------------------------------------
    @staticmethod
    def tiles_in(bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Global (column, row) indices of the tiles that intersect ``bbox``."""
        w, s, e, n = bbox
        c0, c1 = math.floor((max(w, -180) + 180) / TILE_DEG), math.ceil((min(e, 180) + 180) / TILE_DEG)
        r0, r1 = math.floor((max(s, -80) + 80) / TILE_DEG), math.ceil((min(n, 84) + 80) / TILE_DEG)
        cols, rows = np.meshgrid(np.arange(c0, max(c0, c1)), np.arange(r0, max(r0, r1)))
        return cols.ravel(), rows.ravel()

    def _code(self, col: int, row: int) -> tuple[int, str, str]:
        lon = -180 + (col + 0.5) * TILE_DEG
        lat = -80 + (row + 0.5) * TILE_DEG
        zone = min(60, int((lon + 180) // 6) + 1)
        band = _BANDS[min(len(_BANDS) - 1, int((lat + 80) // 8))]
        sq = _LETTERS[col % 24] + _LETTERS[row % 24]
        return zone, band, sq

    def _corner(self, col: int, row: int, zone: int, south: bool) -> tuple[float, float]:
        key = (col * 100_000 + row) * 2 + south
        got = self._utm.get(key)
        if got is None:
            from pyproj import Transformer

            tr = Transformer.from_crs(4326, (32700 if south else 32600) + zone, always_xy=True)
            x, y = tr.transform(-180 + col * TILE_DEG, -80 + (row + 1) * TILE_DEG)
            got = self._utm[key] = (round(x / 60) * 60.0, round(y / 60) * 60.0)
        return got

    # times ---------------------------------------------------------------------------------------
    @staticmethod
    def times(cols: np.ndarray, rows: np.ndarray, start: datetime, end: datetime) -> tuple[np.ndarray, np.ndarray]:
        """(tile position, acquisition time in epoch seconds) of every item of those tiles in [start, end]."""
        lon = -180 + (cols + 0.5) * TILE_DEG
        # ~10:30 local solar time, in UTC seconds of the day; the pass day shifts with the column.
        tod = np.mod((10.5 - lon / 15.0) * 3600.0, 86400.0)
        phase = np.mod(cols + rows // 3, REVISIT_DAYS)
        d0 = math.floor((start - EPOCH).total_seconds() / 86400.0) - 1
        d1 = math.ceil((end - EPOCH).total_seconds() / 86400.0) + 1
        days = np.arange(d0, d1 + 1)
        pos, day = np.nonzero(np.mod(days[None, :] - phase[:, None], REVISIT_DAYS) == 0)
        t = (days[day] * 86400.0 + tod[pos]).round(3)
        lo, hi = (start - EPOCH).total_seconds(), (end - EPOCH).total_seconds()
        ok = (t >= lo) & (t <= hi)
        return pos[ok], t[ok]

    @staticmethod
    def cloud(seed: np.ndarray) -> np.ndarray:
        """A deterministic cloud cover in 0..100 per item; whole 0 and 100 for some (as served)."""
        u = np.mod(seed * 0.6180339887, 1.0)
        cc = np.round(u**2 * 100.0, 6)
        cc[u < 0.05] = 0.0
        cc[u > 0.97] = 100.0
        return cc

    # items ---------------------------------------------------------------------------------------
    def formats(self, fields: dict[str, Any] | None) -> list[_Format]:
        key = json.dumps(fields, sort_keys=True)
        with self._lock:
            got = self._formats.get(key)
            if got is None:
                got = self._formats[key] = [_Format(m, fields) for m in self.marked]
        return got

    def item_text(self, fmt: list[_Format], col: int, row: int, t: float, cloud: float) -> tuple[str, str]:
        """(id, compact JSON) of the item of tile (col, row) acquired at ``t`` epoch seconds."""
        zone, band, sq = self._code(col, row)
        tile = f"{zone}{band}{sq}"
        when = EPOCH + timedelta(seconds=float(t))
        lat0 = -80 + row * TILE_DEG
        south = lat0 + TILE_DEG / 2 < 0
        x, y = self._corner(col, row, zone, south)
        w, s = -180 + col * TILE_DEG, lat0
        e, n = w + TILE_DEG, s + TILE_DEG
        day = when.strftime("%Y%m%d")
        sat = "A" if (int(t // 86400) // REVISIT_DAYS) % 2 == 0 else "B"
        iid = f"S2{sat}_T{tile}_{when.strftime('%Y%m%dT%H%M%S')}_L2A"
        ring = f"[[[{w:.6f},{s:.6f}],[{e:.6f},{s:.6f}],[{e:.6f},{n:.6f}],[{w:.6f},{n:.6f}],[{w:.6f},{s:.6f}]]]"
        cc = int(cloud) if cloud in (0.0, 100.0) else cloud  # served as a JSON integer, as Earth Search does
        values = {
            "id": iid,
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
            "day": day,
            "tile": tile,
            "path": f"{zone}/{band}/{sq}/{when.year}/{when.month}",
            "zone": str(zone),
            "band": band,
            "sq": sq,
            "platform": f"sentinel-2{sat.lower()}",
            "epsg": str((32700 if south else 32600) + zone),
            "centroid": f'{{"lat":{(s + n) / 2:.5f},"lon":{(w + e) / 2:.5f}}}',
            "cloud": json.dumps(cc),
            "geometry": f'{{"type":"Polygon","coordinates":{ring}}}',
            "bbox": f"[{w:.6f},{s:.6f},{e:.6f},{n:.6f}]",
            "x10": repr(x), "x20": repr(x), "x60": repr(x), "y": repr(y),
        }
        k = (col * 7 + row * 13) % len(fmt)
        return iid, fmt[k].render(values)


# ------------------------------------------------------------------------------------------------
# Search
# ------------------------------------------------------------------------------------------------
class BadRequest(ValueError):
    pass


def _parse_dt(text: str, end: bool) -> datetime:
    if text in ("..", ""):
        return datetime(2100, 1, 1, tzinfo=timezone.utc) if end else EPOCH
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if end and len(text) == 10:  # a date alone ends with its last instant
        d += timedelta(days=1, microseconds=-1)
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


@dataclass
class _Result:
    """One query's matches, newest first: tile columns/rows, times, cloud covers, ids (lazy)."""

    cols: np.ndarray
    rows: np.ndarray
    t: np.ndarray
    cloud: np.ndarray


class Catalog:
    """Answers ``/search`` bodies from a :class:`World` (results cached per query)."""

    def __init__(self, world: World, max_body: int = MAX_BODY_BYTES) -> None:
        self.world = world
        self.max_body = max_body
        self._cache: OrderedDict[str, _Result] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "pages": 0, "items": 0, "bytes": 0, "too_big": 0}

    def _query(self, body: dict[str, Any]) -> _Result:
        key = json.dumps({k: v for k, v in body.items() if k not in ("next", "limit", "fields")}, sort_keys=True)
        with self._lock:
            got = self._cache.get(key)
            if got is not None:
                self._cache.move_to_end(key)
                return got
        cols_req = body.get("collections") or [COLLECTION]
        if COLLECTION not in cols_req:
            res = _Result(*(np.zeros(0),) * 4)
        else:
            geom = None
            if body.get("intersects"):
                from shapely.geometry import shape

                geom = shape(body["intersects"])
                bbox = geom.bounds
            else:
                bbox = tuple(body.get("bbox") or (-180, -90, 180, 90))
                if len(bbox) != 4:
                    raise BadRequest("bbox must have 4 numbers")
            raw = str(body.get("datetime") or "../..")
            a, _, b = raw.partition("/")
            start, end = _parse_dt(a, False), _parse_dt(b or a, True)
            cols, rows = World.tiles_in(bbox)  # type: ignore[arg-type]
            if geom is not None and cols.size:
                import shapely

                boxes = shapely.box(-180 + cols * TILE_DEG, -80 + rows * TILE_DEG,
                                    -180 + (cols + 1) * TILE_DEG, -80 + (rows + 1) * TILE_DEG)
                hit = shapely.intersects(boxes, geom)
                cols, rows = cols[hit], rows[hit]
            pos, t = World.times(cols, rows, start, end)
            c, r = cols[pos], rows[pos]
            cloud = World.cloud(c * 1_000_003.0 + r * 7919.0 + t / 86400.0)
            q = (body.get("query") or {}).get("eo:cloud_cover") or {}
            ok = np.ones(t.shape, dtype=bool)
            for op, fn in (("lte", np.less_equal), ("lt", np.less), ("gte", np.greater_equal), ("gt", np.greater),
                           ("eq", np.equal)):
                if op in q:
                    ok &= fn(cloud, float(q[op]))
            order = np.lexsort((c[ok] * 100_000 + r[ok], -t[ok]))  # newest first, then tile
            res = _Result(c[ok][order], r[ok][order], t[ok][order], cloud[ok][order])
        with self._lock:
            self._cache[key] = res
            while len(self._cache) > 256:
                self._cache.popitem(last=False)
        return res

    def search(self, body: dict[str, Any], base_url: str) -> tuple[int, bytes]:
        """(HTTP status, body) of one POST /search."""
        with self._lock:
            self.stats["requests"] += 1
        try:
            limit = int(body.get("limit") or DEFAULT_LIMIT)
        except (TypeError, ValueError):
            return 400, b'{"code":"BadRequest","description":"limit must be an integer"}'
        limit = max(1, min(limit, MAX_LIMIT))
        try:
            res = self._query(body)
        except (BadRequest, ValueError) as err:
            return 400, json.dumps({"code": "BadRequest", "description": str(err)}).encode()
        start = 0
        token = body.get("next")
        if token:
            parts = str(token).split(",")
            found = self._position(res, parts) if len(parts) >= 3 else None
            if found is None:
                return 400, b'{"code":"BadRequest","description":"invalid next token"}'
            start = found + 1
        stop = min(start + limit, res.t.size)
        fmt = self.world.formats(body.get("fields"))
        feats = []
        last_id = ""
        for i in range(start, stop):
            last_id, text = self.world.item_text(fmt, int(res.cols[i]), int(res.rows[i]), float(res.t[i]),
                                                 float(res.cloud[i]))
            feats.append(text)
        links = []
        if stop < res.t.size:
            when = (EPOCH + timedelta(seconds=float(res.t[stop - 1]))).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
            nxt = {**{k: v for k, v in body.items() if k != "next"}, "next": f"{when},{last_id},{COLLECTION}"}
            links.append({"rel": "next", "title": "Next page of Items", "method": "POST", "type": "application/geo+json",
                          "href": f"{base_url}/search", "merge": False, "body": nxt})
        head = {"type": "FeatureCollection", "numberMatched": int(res.t.size), "numberReturned": len(feats),
                "context": {"limit": limit, "matched": int(res.t.size), "returned": len(feats)}, "links": links}
        text = json.dumps(head, separators=(",", ":"))
        out = ('{"features":[' + ",".join(feats) + "]," + text[1:]).encode()
        if len(out) > self.max_body:
            with self._lock:
                self.stats["too_big"] += 1
            return 502, b'{"message": "Internal server error"}'
        with self._lock:
            self.stats["pages"] += 1
            self.stats["items"] += len(feats)
            self.stats["bytes"] += len(out)
        return 200, out

    def _position(self, res: _Result, token: list[str]) -> int | None:
        """Index of the token's item in a result (items of one time are few: their ids are rendered)."""
        try:
            t = round((_parse_dt(token[0], False) - EPOCH).total_seconds(), 3)
        except ValueError:
            return None
        neg = -res.t
        lo, hi = np.searchsorted(neg, -t - 1e-3, side="left"), np.searchsorted(neg, -t + 1e-3, side="right")
        fmt = self.world.formats({"include": ["id"]})
        for i in range(int(lo), int(hi)):
            if self.world.item_text(fmt, int(res.cols[i]), int(res.rows[i]), float(res.t[i]), 0.0)[0] == token[1]:
                return i
        return None


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------
def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                max_body: int = MAX_BODY_BYTES) -> ThreadingHTTPServer:
    """An HTTP server (not started) answering the Earth Search API paths from ``root``'s templates."""
    catalog = Catalog(World(load_templates(root)), max_body=max_body)
    collections = {}
    for p in sorted((root / "collections").glob("*.json")):
        doc = json.loads(p.read_text())
        if doc.get("id") == COLLECTION and "rustac" not in p.name:
            collections[COLLECTION] = doc

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/geo+json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _base(self) -> str:
            h, p = self.server.server_address[:2]
            return f"http://{h}:{p}"

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            base = self._base()
            if path == "":
                doc = {"type": "Catalog", "id": "earth-search-aws", "stac_version": "1.0.0",
                       "description": "A synthetic Earth Search", "conformsTo": CONFORMANCE,
                       "links": [{"rel": "self", "href": base + "/"}, {"rel": "root", "href": base + "/"},
                                 {"rel": "conformance", "href": base + "/conformance"},
                                 {"rel": "data", "href": base + "/collections"},
                                 {"rel": "search", "href": base + "/search", "method": "POST",
                                  "type": "application/geo+json"},
                                 {"rel": "search", "href": base + "/search", "method": "GET",
                                  "type": "application/geo+json"}]}
                return self._send(200, json.dumps(doc).encode(), "application/json")
            if path == "/conformance":
                return self._send(200, json.dumps({"conformsTo": CONFORMANCE}).encode(), "application/json")
            if path == "/collections":
                return self._send(200, json.dumps({"collections": list(collections.values()), "links": []}).encode(),
                                  "application/json")
            if path.startswith("/collections/") and path.count("/") == 2:
                doc = collections.get(path.split("/")[2])
                if doc is None:
                    return self._send(404, b'{"code":"NotFound","description":"Not Found"}', "application/json")
                return self._send(200, json.dumps(doc).encode(), "application/json")
            return self._send(404, b'{"code":"NotFound","description":"Not Found"}', "application/json")

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b"{}"
            if self.path.split("?")[0].rstrip("/") != "/search":
                return self._send(404, b'{"code":"NotFound","description":"Not Found"}', "application/json")
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._send(400, b'{"code":"BadRequest","description":"invalid JSON"}', "application/json")
            if latency:
                time.sleep(latency)
            status, out = catalog.search(body, self._base())
            self._send(status, out)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.catalog = catalog  # type: ignore[attr-defined]
    return server


@contextmanager
def serve_earth_search(root: Path | None = None, *, latency: float = 0.0, timeout: float = 60.0) -> Iterator[str]:
    """Run the synthetic Earth Search in a subprocess on a free loopback port; yield its URL."""
    root = root or real_items_dir()
    if root is None:
        raise FileNotFoundError("../shared/real-items is absent (set CUBELESS_REAL_ITEMS)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cubeless.demo.earth_search", "--root", str(root), "--latency", str(latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"the synthetic Earth Search did not start (got {line!r})")
        yield line
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="the real-items folder (default ../shared/real-items)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every search answer")
    a = ap.parse_args(argv)
    root = a.root or real_items_dir()
    if root is None:
        print("../shared/real-items is absent; pass --root", file=sys.stderr)
        return 2
    server = make_server(root, port=a.port, latency=a.latency)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    print(f"http://{h}:{p}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes stdin
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
