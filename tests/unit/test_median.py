"""The median kernel and mask dilation against independent, obviously-correct references."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from cubeless._median import dilate, masked_median, sorting_network


def ref_median(stack: np.ndarray, valid: np.ndarray, nodata: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: np.median of the valid values, rounded half to even; 0 if none; and the count."""
    t, ny, nx = stack.shape
    med = np.zeros((ny, nx), np.uint16)
    cnt = np.zeros((ny, nx), np.uint16)
    for y in range(ny):
        for x in range(nx):
            ok = valid[:, y, x].copy()
            if nodata is not None:
                ok &= stack[:, y, x] != nodata
            vals = stack[ok, y, x].astype(np.float64)
            cnt[y, x] = vals.size
            if vals.size:
                med[y, x] = np.uint16(np.round(np.median(vals)))
    return med, cnt


def nanmedian_ref(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The benchmark's reference: np.nanmedian on a float32 copy, rounded, NaN -> 0."""
    f = np.where(valid, stack.astype(np.float32), np.float32(np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmedian(f, axis=0)
    return np.nan_to_num(np.round(m), nan=0).astype(np.uint16)


@pytest.mark.parametrize("n", range(1, 70))
def test_sorting_network_sorts_every_zero_one_input_it_must(n):
    # 0-1 principle: a comparator network sorts everything iff it sorts every 0/1 sequence.
    # Exhaustive for small n, random 0/1 sequences (plus random integers) for larger n.
    net = sorting_network(n)
    rng = np.random.default_rng(n)
    if n <= 12:
        cases = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int64).reshape(-1, n)
    else:
        cases = np.concatenate([rng.integers(0, 2, (3000, n)), rng.integers(0, 9, (500, n))])
    x = cases.T.copy()  # (n, cases): apply every comparator to all cases at once
    for a, b in net:
        lo = np.minimum(x[a], x[b])
        x[b] = np.maximum(x[a], x[b])
        x[a] = lo
    assert (np.diff(x, axis=0) >= 0).all()
    assert sorting_network(0) == sorting_network(1) == ()


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 7, 8, 12, 17, 30, 33, 64, 100, 130])
def test_matches_reference_on_random_data(t):
    rng = np.random.default_rng(t)
    stack = rng.integers(0, 50, (t, 9, 11), dtype=np.uint16)  # many ties, many even counts
    valid = rng.random((t, 9, 11)) > 0.5
    med, cnt = masked_median(stack, valid, threads=2, block_pixels=32)
    rmed, rcnt = ref_median(stack, valid)
    np.testing.assert_array_equal(med, rmed)
    np.testing.assert_array_equal(cnt, rcnt)
    np.testing.assert_array_equal(med, nanmedian_ref(stack, valid))


def test_edge_cases_even_counts_half_rounding_and_no_valid():
    stack = np.zeros((4, 1, 6), np.uint16)
    valid = np.zeros((4, 1, 6), bool)
    # px0: one value; px1: two values with .5 mean rounding down to even (2.5 -> 2)
    # px2: 3.5 -> 4; px3: no valid value; px4: four values (mean of middle two 10, 20 -> 15)
    # px5: all valid, odd total
    cols = {
        0: ([7], [True]),
        1: ([2, 3], [True, True]),
        2: ([3, 4], [True, True]),
        3: ([9, 9, 9, 9], [False] * 4),
        4: ([30, 10, 20, 5], [True] * 4),
        5: ([1, 2, 3, 4], [True, True, True, False]),
    }
    for x, (vals, ok) in cols.items():
        stack[: len(vals), 0, x] = vals
        valid[: len(ok), 0, x] = ok
    med, cnt = masked_median(stack, valid)
    assert med[0].tolist() == [7, 2, 4, 0, 15, 2]
    assert cnt[0].tolist() == [1, 2, 2, 0, 4, 3]


def test_values_near_and_at_the_top_of_uint16_are_exact():
    # Invalid observations are sorted last as 65535; valid 65535s must still count as values.
    rng = np.random.default_rng(1)
    t = 9
    stack = rng.choice(np.array([65535, 65534, 65533, 1, 0], np.uint16), size=(t, 20, 20))
    valid = rng.random((t, 20, 20)) > 0.4
    med, cnt = masked_median(stack, valid)
    rmed, rcnt = ref_median(stack, valid)
    np.testing.assert_array_equal(med, rmed)
    np.testing.assert_array_equal(cnt, rcnt)
    # Two valid 65535s and one invalid: the median is 65535, count 2.
    s = np.array([[[65535]], [[65535]], [[5]]], np.uint16)
    v = np.array([[[True]], [[True]], [[False]]])
    m, c = masked_median(s, v)
    assert (m[0, 0], c[0, 0]) == (65535, 2)
    # 65534 and 65535: mean 65534.5 rounds to the even 65534.
    m, c = masked_median(np.array([[[65535]], [[65534]]], np.uint16), np.ones((2, 1, 1), bool))
    assert m[0, 0] == 65534


def test_nodata_values_are_invalid_too():
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 4, (6, 8, 8), dtype=np.uint16)  # plenty of zeros
    valid = rng.random((6, 8, 8)) > 0.3
    med, cnt = masked_median(stack, valid, nodata=0)
    rmed, rcnt = ref_median(stack, valid, nodata=0)
    np.testing.assert_array_equal(med, rmed)
    np.testing.assert_array_equal(cnt, rcnt)


def test_block_and_thread_settings_do_not_change_results():
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 10000, (13, 37, 41), dtype=np.uint16)
    valid = rng.random((13, 37, 41)) > 0.6
    base = masked_median(stack, valid, threads=1)
    for threads, block in [(1, 64), (2, 64), (3, 1000), (2, 10**6)]:
        med, cnt = masked_median(stack, valid, threads=threads, block_pixels=block)
        np.testing.assert_array_equal(med, base[0])
        np.testing.assert_array_equal(cnt, base[1])
    np.testing.assert_array_equal(base[0], nanmedian_ref(stack, valid))


def test_zero_observations_and_bad_inputs():
    med, cnt = masked_median(np.zeros((0, 3, 4), np.uint16), np.zeros((0, 3, 4), bool))
    assert med.shape == (3, 4) and not med.any() and not cnt.any()
    with pytest.raises(ValueError, match="uint16"):
        masked_median(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="bool"):
        masked_median(np.zeros((2, 3, 4), np.uint16), np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="t, y, x"):
        masked_median(np.zeros((3, 4), np.uint16), np.zeros((3, 4), bool))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(4)
    stack = rng.integers(0, 100, (5, 6, 7), dtype=np.uint16)
    valid = rng.random((5, 6, 7)) > 0.5
    s0, v0 = stack.copy(), valid.copy()
    masked_median(stack, valid, nodata=0)
    np.testing.assert_array_equal(stack, s0)
    np.testing.assert_array_equal(valid, v0)


def ref_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = np.zeros_like(mask)
    ny, nx = mask.shape[-2:]
    for y, x in zip(*np.nonzero(mask)):
        out[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    return out


@pytest.mark.parametrize("r", [0, 1, 2, 3, 5, 8, 16])
def test_dilate_matches_a_square_stamp(r):
    rng = np.random.default_rng(r)
    mask = rng.random((3, 23, 31)) > 0.97
    mask[0, 0, 0] = mask[1, -1, -1] = True  # corners: the window is clipped at the edges
    out = dilate(mask, r)
    assert out.shape == mask.shape and out.dtype == bool
    for i in range(mask.shape[0]):
        np.testing.assert_array_equal(out[i], ref_dilate(mask[i], r))
    assert not dilate(np.zeros((4, 5), bool), r).any()
