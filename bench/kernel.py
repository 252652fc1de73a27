"""Median kernel benchmark: cubeless ``masked_median`` against numpy's and bottleneck's nanmedian."""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import numpy as np

SHAPE = (30, 1200, 1200)
MASKED = 0.6


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(30, 1200, 1200) uint16 reflectance-like values (1..12000) and a mask with ~60% invalid."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(1, 12_000, SHAPE, dtype=np.uint16)
    valid = rng.random(SHAPE, dtype=np.float32) >= MASKED
    return stack, valid


def _nanmedian(stack: np.ndarray, valid: np.ndarray, fn: Any) -> np.ndarray:
    """The float route: float32 with NaN where invalid, nanmedian over time, round, 0 where none."""
    x = stack.astype(np.float32)
    x[~valid] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        med = fn(x, axis=0)
    return np.nan_to_num(np.round(med), nan=0).astype(np.uint16)


def kernel(reps: int = 3) -> dict[str, Any]:
    """Median seconds of each kernel over ``reps`` alternating rounds; results must be identical."""
    import bottleneck as bn

    from cubeless._median import masked_median

    stack, valid = data()
    sides = {
        "masked_median": lambda: masked_median(stack, valid)[0],
        "numpy_nanmedian": lambda: _nanmedian(stack, valid, np.nanmedian),
        "bottleneck_nanmedian": lambda: _nanmedian(stack, valid, bn.nanmedian),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    results: dict[str, np.ndarray] = {}
    order = list(sides)
    for r in range(reps):
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            results[name] = sides[name]()
            times[name].append(time.perf_counter() - t0)
    ref = results["numpy_nanmedian"]
    identical = {k: bool(np.array_equal(v, ref)) for k, v in results.items()}
    if not all(identical.values()):
        raise AssertionError(f"median kernels disagree: {identical}")
    return {
        "shape": list(SHAPE),
        "masked_share": float(1 - valid.mean()),
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "all": times,
        "identical": identical,
    }
