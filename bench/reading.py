"""Measuring what a task reads: an HTTP range server that logs every byte it serves.

Both sides read the cached scenes through ``http://127.0.0.1:<port>/...`` (GDAL's ``/vsicurl/``,
as they would read ``https://`` COGs on S3), so the bytes are measured the same way for both:
what the server sent. The COG block tables (``TileOffsets``/``TileByteCounts`` of every
overview level, from GDAL's ``BLOCK_OFFSET_x_y``/``BLOCK_SIZE_x_y`` metadata) turn the served byte
ranges into blocks fetched, and so into pixels decompressed: GDAL fetches a block's bytes to
decode it, and decodes each block of a dataset once while it is cached.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


class _Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.bytes = 0
        self.requests = 0

    def reset(self) -> None:
        with self.lock:
            self.ranges.clear()
            self.bytes = 0
            self.requests = 0

    def add(self, path: str, start: int, end: int) -> None:
        with self.lock:
            self.ranges[path].append((start, end))
            self.bytes += end - start
            self.requests += 1


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges (like an object store), logging what it sends."""

    log: _Log

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self):  # type: ignore[override]
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        rng = self.headers.get("Range")
        if rng:
            first, _, last = rng.removeprefix("bytes=").split(",")[0].partition("-")
            start = int(first)
            end = min(int(last) if last else size - 1, size - 1)
        else:
            start, end = 0, size - 1
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "image/tiff")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        self._start = start
        self._path = path
        return f

    def copyfile(self, source, outputfile):  # type: ignore[override]
        """Send the range in pieces, logging what was actually sent (a client may hang up early:
        GDAL stops an open-ended first request once it has the header)."""
        sent = 0
        try:
            while sent < self._remaining:
                buf = source.read(min(1 << 16, self._remaining - sent))
                if not buf:
                    break
                outputfile.write(buf)
                sent += len(buf)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            if sent:
                self.log.add(self._path, self._start, self._start + sent)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client hanging up is fine
        pass


@contextmanager
def serve(root: Path) -> Iterator[tuple[str, _Log]]:
    """Serve ``root`` on a free local port: (base URL, log)."""
    log = _Log()
    handler = type("LoggingHandler", (_Handler,), {"log": log})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", log
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Block:
    level: int  #: 0 = full resolution, 1 = first overview ...
    offset: int
    size: int
    pixels: int


@functools.lru_cache(maxsize=None)
def block_table(path: str) -> tuple[Block, ...]:
    """Every block of every level of a single-band tiled GeoTIFF."""
    import rasterio

    out: list[Block] = []
    with rasterio.open(path) as ds:
        levels = [None, *range(len(ds.overviews(1)))]
    for lvl, ovr in enumerate(levels):
        kw = {"OVERVIEW_LEVEL": "NONE"} if ovr is None else {"overview_level": ovr}
        with rasterio.open(path, **kw) as ds:
            bh, bw = ds.block_shapes[0]
            for by in range(-(-ds.height // bh)):
                for bx in range(-(-ds.width // bw)):
                    off = ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1)
                    size = ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1)
                    if off is None or size is None or int(size) == 0:
                        continue
                    out.append(Block(lvl, int(off), int(size), bh * bw))
    return tuple(out)


def blocks_fetched(ranges: dict[str, list[tuple[int, int]]]) -> tuple[int, int, dict[int, int]]:
    """(blocks, pixels, blocks per level) whose bytes were entirely served."""
    nblocks = npix = 0
    per_level: dict[int, int] = defaultdict(int)
    for path, rs in ranges.items():
        merged = _merge(rs)
        for b in block_table(path):
            if _covered(merged, b.offset, b.offset + b.size):
                nblocks += 1
                npix += b.pixels
                per_level[b.level] += 1
    return nblocks, npix, dict(per_level)


def full_resolution_baseline(paths_bounds: list[tuple[str, tuple[int, int, int, int]]]) -> tuple[int, int]:
    """(bytes, pixels) of the full-resolution blocks under the given pixel windows
    (col0, row0, col1, row1) of each file: what reading without overviews would fetch."""
    import rasterio

    nbytes = npix = 0
    for path, (c0, r0, c1, r1) in paths_bounds:
        with rasterio.open(path, OVERVIEW_LEVEL="NONE") as ds:
            bh, bw = ds.block_shapes[0]
            c0, r0 = max(0, c0), max(0, r0)
            c1, r1 = min(ds.width, c1), min(ds.height, r1)
            if c1 <= c0 or r1 <= r0:
                continue
            for by in range(r0 // bh, (r1 - 1) // bh + 1):
                for bx in range(c0 // bw, (c1 - 1) // bw + 1):
                    size = ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1)
                    nbytes += int(size or 0)
                    npix += bh * bw
    return nbytes, npix


def _merge(rs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(rs):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(merged: list[tuple[int, int]], a: int, b: int) -> bool:
    import bisect

    i = bisect.bisect_right(merged, (a, float("inf"))) - 1
    return i >= 0 and merged[i][0] <= a and merged[i][1] >= b


def odc_plan_pixels(items: list[dict[str, Any]], gbox: Any, keys: list[str], *, chunk: int = 600,
                    scl_key: str = "scl", seed_scl: str = "bilinear") -> dict[str, int]:
    """Pixels the seed decodes, from odc-loader's own read plan: per (item, asset, dask chunk of
    ``chunk`` x ``chunk``) the source window ``compute_reproject_roi`` gives, on the overview
    ``pick_overview`` chooses, widened by the warper's kernel reach (2 source pixels), counted in
    whole COG blocks. Every chunk reads separately (its own dataset), so blocks on chunk
    boundaries count once per chunk, as GDAL decodes them once per dataset."""
    import math

    import rasterio
    from odc.geo.geobox import GeoBox, GeoboxTiles
    from odc.geo.overlap import compute_reproject_roi

    from cubeless._load import _pick_overview

    tiles = GeoboxTiles(gbox, (chunk, chunk))
    ny, nx = tiles.shape.yx
    block_pixels = window_pixels = 0
    for item in items:
        for key in keys:
            path = item["assets"][key]["href"]
            with rasterio.open(path) as ds:
                src = GeoBox(ds.shape, ds.transform, ds.crs.to_wkt())
                factors = list(ds.overviews(1))
            nearest = key == scl_key and seed_scl == "nearest"
            for iy in range(ny):
                for ix in range(nx):
                    dst = tiles[iy, ix]
                    rr = compute_reproject_roi(src, dst, ttol=0.9 if nearest else 0.05)
                    sy, sx = rr.roi_src
                    if sy.stop <= sy.start or sx.stop <= sx.start:
                        continue
                    idx = _pick_overview(rr.read_shrink, factors) if rr.read_shrink > 1 else None
                    f = 1 if idx is None else factors[idx]
                    kw = {"OVERVIEW_LEVEL": "NONE"} if idx is None else {"overview_level": idx}
                    with rasterio.open(path, **kw) as lvl:
                        bh, bw = lvl.block_shapes[0]
                        W, H = lvl.width, lvl.height
                    c0, c1 = max(0, math.floor(sx.start / f) - 2), min(W, math.ceil(sx.stop / f) + 2)
                    r0, r1 = max(0, math.floor(sy.start / f) - 2), min(H, math.ceil(sy.stop / f) + 2)
                    window_pixels += (c1 - c0) * (r1 - r0)
                    nby = (r1 - 1) // bh - r0 // bh + 1
                    nbx = (c1 - 1) // bw - c0 // bw + 1
                    block_pixels += nby * nbx * bh * bw
    return {"block_pixels": block_pixels, "window_pixels": window_pixels}


def full_resolution_pixels(items: list[dict[str, Any]], gbox: Any, keys: list[str]) -> dict[str, int]:
    """Bytes and pixels of the full-resolution COG blocks under the tile, for every asset: what a
    reader that ignores overviews would fetch and decode."""
    import rasterio

    pb = []
    for item in items:
        for key in keys:
            path = item["assets"][key]["href"]
            with rasterio.open(path) as ds:
                inv = ~ds.transform
                l, b, r, t = gbox.boundingbox
                cs, rs = zip(*[inv * (x, y) for x, y in ((l, t), (r, b))])
                c0, c1 = int(min(cs)), int(-(-max(cs) // 1))
                r0, r1 = int(min(rs)), int(-(-max(rs) // 1))
            pb.append((path, (c0, r0, c1, r1)))
    nbytes, npix = full_resolution_baseline(pb)
    return {"bytes": nbytes, "block_pixels": npix}
