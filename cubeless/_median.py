"""The per-pixel kernels of a composite: masked median over time, and mask dilation.

Both are plain numpy (no numba, no scipy): they run the same on a laptop and in a Lambda.

:func:`masked_median` sorts each pixel's time series with a *sorting network* applied to whole
rows of pixels at once: every compare-exchange is one ``np.minimum`` and one ``np.maximum`` over a
block of ~30 000 pixels, which numpy runs as SIMD over cache-resident memory; swaps are free (rows
are renamed, not copied). numpy releases the GIL inside each call, so blocks can run on several
cores through a thread pool, but the calls are short (a few microseconds) and GIL hand-offs
between threads cost as much as they save: measured on 2 cores, one thread is as fast or faster,
so that is the default. For more than 96 observations a plain ``np.sort`` along time (one long
GIL-free call per block) is used instead, and there threads do help: the default is one per CPU.
Invalid observations are
replaced by the largest ``uint16`` (65535) before sorting, so they sort last; the ``n`` valid
values of a pixel are then exactly its first ``n`` sorted values, even when some valid values are
65535 themselves (equal values are interchangeable). The median is read at ranks ``(n-1)//2`` and
``n//2``. The result is exactly ``np.round(np.nanmedian(x.astype(float32)))`` on the same data:
for an even count the mean of the two middle values, ties rounded half to even.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

__all__ = ["masked_median", "dilate", "sorting_network"]

#: Working-set target of one block (bytes): the (t+1, pixels) uint16 buffer stays in L2 cache
#: while each ufunc call is long enough (tens of microseconds) to amortise GIL hand-offs.
_BLOCK_BYTES = 1 << 21
#: Above this many observations a comparison sort beats the network (O(t log^2 t) comparators).
_NETWORK_MAX_T = 96


@lru_cache(maxsize=64)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for ``n`` inputs, as (lower, upper) compare-exchange pairs.

    Built for the next power of two and pruned: a comparator touching an index >= ``n`` only ever
    compares against a padding element that is larger than everything, so it never swaps.
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def _threads(threads: int | None, t: int) -> int:
    if threads is not None:
        return max(1, threads)
    if t <= _NETWORK_MAX_T:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _median_block(
    stack: np.ndarray,
    valid: np.ndarray,
    nodata: int | None,
    out_med: np.ndarray,
    out_cnt: np.ndarray,
    p0: int,
    p1: int,
) -> None:
    """Median and count of pixels [p0, p1) of a (t, pixels) stack, written into the outputs."""
    t = stack.shape[0]
    n = p1 - p0
    s = stack[:, p0:p1]
    ok = valid[:, p0:p1]
    if nodata is not None:
        ok = np.not_equal(s, nodata)
        np.logical_and(ok, valid[:, p0:p1], out=ok)
    ok8 = ok.view(np.uint8)
    cnt = np.add.reduce(ok8, axis=0, dtype=np.uint16)

    # One spare row for the compare-exchange output; rows are addressed through `pos`.
    buf = np.empty((t + 1, n), dtype=np.uint16)
    vals = buf[:t]
    np.subtract(ok8, np.uint8(1), out=vals, dtype=np.uint16, casting="unsafe")  # valid 0, else 65535
    np.bitwise_or(vals, s, out=vals)

    if t <= _NETWORK_MAX_T:
        rows = list(buf)
        pos = list(range(t))
        spare = t
        for a, b in sorting_network(t):
            ia, ib = pos[a], pos[b]
            np.minimum(rows[ia], rows[ib], out=rows[spare])
            np.maximum(rows[ia], rows[ib], out=rows[ib])
            pos[a], spare = spare, ia
        order = np.asarray(pos, dtype=np.intp)
    else:
        vals.sort(axis=0)
        order = np.arange(t, dtype=np.intp)

    c = cnt.astype(np.intp)
    lo_rank = np.maximum(c - 1, 0) >> 1
    hi_rank = c >> 1
    col = np.arange(n, dtype=np.intp)
    flat = buf.reshape(-1)
    lo = np.take(flat, order[lo_rank] * n + col).astype(np.uint32)
    hi = np.take(flat, order[hi_rank] * n + col)
    lo += hi  # the sum of the two middle values
    half = lo >> 1
    half += lo & half & 1  # x.5 rounds to the even neighbour
    half[c == 0] = 0
    out_med[p0:p1] = half
    out_cnt[p0:p1] = cnt


def masked_median(
    stack: np.ndarray,
    valid: np.ndarray,
    *,
    nodata: int | None = None,
    threads: int | None = None,
    block_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over time of the valid observations, and how many there were.

    :param stack: (t, y, x) uint16 observations.
    :param valid: (t, y, x) bool, True where the observation is usable.
    :param nodata: if given, observations equal to it are invalid too (without a separate mask).
    :param threads: worker threads over pixel blocks (default: 1 for the sorting network, which
        does not gain from threads; one per CPU for the ``np.sort`` path above 96 observations).
    :param block_pixels: pixels per block (default: sized so a block stays in L2 cache).
    :returns: ``(median, count)``, both (y, x) uint16. The median of an even count is the mean of
        the two middle values rounded half to even (numpy's convention); 0 where nothing is valid.
    """
    stack = np.asarray(stack)
    valid = np.asarray(valid)
    if stack.ndim != 3:
        raise ValueError(f"stack must be (t, y, x), got shape {stack.shape}")
    if stack.dtype != np.uint16:
        raise ValueError(f"stack must be uint16, got {stack.dtype}")
    if valid.shape != stack.shape or valid.dtype != np.bool_:
        raise ValueError(f"valid must be a bool array of shape {stack.shape}, got {valid.dtype} {valid.shape}")
    t, ny, nx = stack.shape
    npix = ny * nx
    med = np.zeros(npix, dtype=np.uint16)
    cnt = np.zeros(npix, dtype=np.uint16)
    if t == 0 or npix == 0:
        return med.reshape(ny, nx), cnt.reshape(ny, nx)
    if t > 0xFFFF:
        raise ValueError(f"at most 65535 observations per pixel, got {t}")
    s2 = stack.reshape(t, npix)
    v2 = valid.reshape(t, npix)
    if block_pixels is None:
        block_pixels = max(1024, (_BLOCK_BYTES // (2 * (t + 1))) // 64 * 64)
    starts = range(0, npix, block_pixels)
    workers = min(_threads(threads, t), len(starts))

    def run(p0: int) -> None:
        _median_block(s2, v2, nodata, med, cnt, p0, min(p0 + block_pixels, npix))

    if workers == 1:
        for p0 in starts:
            run(p0)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="cubeless-median") as pool:
            for _ in pool.map(run, starts):
                pass
    return med.reshape(ny, nx), cnt.reshape(ny, nx)


def _max_filter_axis(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """OR over a window of 2*radius+1 along ``axis`` (clipped at the edges), in O(log radius) passes."""
    width = 2 * radius + 1
    n = mask.shape[axis]
    # Pad with False so the window is centred: out[i] = OR(src[i - r : i + r + 1]).
    pad = [(0, 0)] * mask.ndim
    pad[axis] = (radius, radius)
    src = np.pad(mask, pad)

    def sl(start: int, stop: int) -> tuple[slice, ...]:
        idx = [slice(None)] * mask.ndim
        idx[axis] = slice(start, stop)
        return tuple(idx)

    # acc[i] = OR(src[i : i + span]) for the largest power-of-two span <= width.
    acc = src
    span = 1
    while span * 2 <= width:
        m = acc.shape[axis]
        acc = acc[sl(0, m - span)] | acc[sl(span, m)]
        span *= 2
    # Two overlapping power-of-two windows cover the full width.
    rest = width - span
    return acc[sl(0, n)] | acc[sl(rest, rest + n)]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow True areas of a (..., y, x) bool mask by ``radius`` pixels (square structuring element).

    Equivalent to ``scipy.ndimage.binary_dilation`` with a (2r+1)x(2r+1) square, applied to each
    leading slice separately, with nothing outside the array.
    """
    if radius <= 0:
        return mask.copy()
    out = _max_filter_axis(mask, radius, mask.ndim - 1)
    return _max_filter_axis(out, radius, mask.ndim - 2)
