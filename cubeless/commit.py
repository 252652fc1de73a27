"""The commit step: publish a run's time steps once every planned task is done.

:func:`commit_run` reads the run record, the planned task ids (from the compact task index), the
done markers (ONE listing) and the failed markers. If every planned task is done it grows the
cube's time axis over the run's bins (:func:`cubeless.store.publish_bins`: time values, array
shapes, then the consolidated root ``zarr.json``, the atomic switch for readers) and writes the
manifest with ``complete=True``, both the run's own and ``<store>/_cubeless/manifest.json``.

Otherwise it does not touch the arrays and writes the run's manifest with ``complete=False``,
the failures (task id -> last error) and the missing ids. It raises nothing in that case: the
caller looks at ``manifest.complete`` and decides the exit code. Committing a complete run again
is harmless.

Task timings come from the done markers' bodies, read for a reproducible random sample of at most
``timing_sample`` tasks (all of them when fewer), so a 10,000-task commit costs one listing plus
a bounded number of reads.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Mapping

import numpy as np

from . import fs
from . import store as cube
from .errors import CubelessError
from .models import CostEstimate, Manifest, TaskResult
from .spec import CubeSpec
from .state import RunState
from .timebins import TimeBin

log = logging.getLogger(__name__)

MANIFEST_KEY = "_cubeless/manifest.json"
PACKAGES = ("cubeless", "zarr", "icechunk", "xarray", "odc-stac", "odc-geo", "numpy", "rasterio", "s3fs", "pydantic")
#: At most this many failures are copied into a manifest (the count is always exact).
MAX_FAILURES_LISTED = 1000


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def manifest_uri(store: str) -> str:
    """Where the latest commit's manifest lives."""
    return fs.join(fs.normalize(store), MANIFEST_KEY)


def read_manifest(store: str, run_id: str | None = None) -> Manifest | None:
    """The store's latest manifest (or a run's), None if absent."""
    uri = RunState(store, run_id).manifest_uri if run_id else manifest_uri(store)
    try:
        return Manifest.model_validate_json(fs.get_bytes(uri))
    except FileNotFoundError:
        return None


def _task_timings(results: list[TaskResult], done: int) -> dict[str, float]:
    if not results:
        return {}
    secs = np.array([r.seconds for r in results], dtype=np.float64)
    out = {
        "task_seconds_p50": float(np.percentile(secs, 50)),
        "task_seconds_p95": float(np.percentile(secs, 95)),
        "task_seconds_max": float(secs.max()),
        # Exact when every done marker was read, else the sample mean times the done count.
        "task_seconds_sum": float(secs.sum() if len(results) == done else secs.mean() * done),
        "tasks_timed": float(len(results)),
        "task_peak_rss_mb_max": float(max(r.peak_rss_mb for r in results)),
        "task_attempts_max": float(max(r.attempts for r in results)),
    }
    return out


def _run_indices(bins: list[TimeBin], origin: Any, interval: str, committed: int, run_id: str) -> list[int]:
    idx = sorted(cube.time_index(origin, b, interval) for b in bins)
    if idx and (idx != list(range(idx[0], idx[0] + len(idx))) or idx[0] > committed):
        raise CubelessError(
            f"run {run_id} fills time indices {idx[0]}..{idx[-1]} (non-contiguous or past the committed length "
            f"{committed}); bins must extend the cube without gaps, plan the run again"
        )
    return idx


def commit_run(
    store: str,
    run_id: str,
    *,
    extra_timings: Mapping[str, float] | None = None,
    cost: CostEstimate | None = None,
    spec: CubeSpec | None = None,
    timing_sample: int | None = 256,
    pyramid_workers: int = 4,
) -> Manifest:
    """Publish run ``run_id`` in ``store`` if every planned task is done; return its manifest.

    ``spec`` is only needed for a run planned without tasks and without a recorded spec.
    Before publishing, the pyramid's cross-tile levels of the new bins are reduced on a pool of
    ``pyramid_workers`` threads (:func:`cubeless.pyramid.build_cross_levels`).
    Raises :class:`CubelessError` only for a broken run (no record, no task list, bins with a gap),
    never for an incomplete one: check ``manifest.complete``.
    """
    t0 = time.perf_counter()
    state = RunState(store, run_id)
    try:
        record = state.read_record()
    except FileNotFoundError:
        raise CubelessError(f"run {run_id} has no record in {state.store}; plan it first") from None
    try:
        index = state.read_index()
    except FileNotFoundError:
        raise CubelessError(f"run {run_id} has no task list in {state.root}; plan it again") from None
    if spec is None:
        if index.get("spec") is None:
            raise CubelessError(f"run {run_id} has no tasks and no recorded spec; pass spec= to commit it")
        spec = CubeSpec.model_validate(index["spec"])
    planned: list[str] = list(index["ids"])
    t_read = time.perf_counter()

    planned_set = set(planned)
    done = state.done_ids() & planned_set
    t_list = time.perf_counter()
    failed_all = state.failures() if len(done) < len(planned_set) else {}
    failed = {k: v for k, v in failed_all.items() if k in planned_set and k not in done}
    missing = [i for i in planned if i not in done and i not in failed]
    count_ok = len(planned) == record.task_count
    complete = count_ok and not failed and not missing

    info = cube.cube_info(state.store)
    if info is None:
        raise CubelessError(f"store {state.store} holds no cube; plan the run again (it creates the cube)")
    committed = info.length
    indices = _run_indices(record.bins, info.origin, info.interval, committed, run_id)

    committed_bins = info.committed_bins
    pyramid_timings: dict[str, float] = {}
    snapshot: str | None = None
    ic_timings: dict[str, float] = {}
    if complete and spec.format == "icechunk":
        # One snapshot on main: the tasks' forks merged, committed once, tagged with the run id.
        # (Icechunk cubes have no pyramid levels yet: the cube records none.)
        from . import icechunk_store

        bins_doc = [b.label for b in sorted(record.bins, key=lambda b: b.start)]
        message = f"cubeless run {run_id}: {len(bins_doc)} time step(s) {', '.join(bins_doc[:3])}{'...' if len(bins_doc) > 3 else ''}, {len(planned)} tasks"
        snapshot, ic_timings = icechunk_store.commit_run(
            state, done, message=message, metadata={"run_id": run_id, "bins": bins_doc, "tasks": len(planned)}
        )
        committed_bins = cube.committed_bins(state.store)
    elif complete and indices and indices[-1] + 1 > committed:
        from .pyramid import build_cross_levels

        # the pyramid's cross-tile levels of the new bins, before the switch that shows them
        pyramid_timings = build_cross_levels(state.store, [i for i in indices if i >= committed], workers=pyramid_workers)
        committed_bins = cube.publish_bins(state.store, indices[-1] + 1)
    t_publish = time.perf_counter()

    results = state.done_results(done, sample=timing_sample) if done else []
    items: list[str] = list(index.get("items") or [])
    refs: list[list[int]] = list(index.get("task_items") or [])
    used_pos = {p for tid, r in zip(planned, refs) if tid in done for p in r}
    items_used = sorted(items[p] for p in used_pos)

    timings: dict[str, float] = _task_timings(results, len(done))
    if cost is None and timings.get("task_seconds_sum"):
        from .cost import DEFAULT_MEMORY_MB, estimate_cost

        # What these tasks cost on Lambda (arm64, the stack's default worker memory) at the
        # durations measured where they ran; the AWS commit passes its own deployment's figure.
        cost = estimate_cost(timings["task_seconds_sum"] / max(1, len(done)), len(planned), DEFAULT_MEMORY_MB)
    timings.update(
        {
            "commit_read_seconds": t_read - t0,
            "commit_list_seconds": t_list - t_read,
            "commit_publish_seconds": t_publish - t_list,
            **pyramid_timings,
            **ic_timings,
        }
    )
    failures = {k: (v.error or "failed without a message") for k, v in sorted(failed.items())[:MAX_FAILURES_LISTED]}
    if not count_ok:
        failures["<plan>"] = (
            f"the run record plans {record.task_count} tasks but the task list holds {len(planned)}; plan the run again"
        )
    from . import __version__

    result = Manifest(
        cubeless_version=__version__,
        run_id=run_id,
        spec=spec,
        complete=complete,
        committed_bins=committed_bins,
        run_bins=sorted(record.bins, key=lambda b: b.start),
        tasks_planned=len(planned),
        tasks_done=len(done),
        tasks_failed=len(failed),
        failures=failures,
        missing=missing,
        items_used=items_used,
        timings={**timings, "commit_seconds": time.perf_counter() - t0, **dict(extra_timings or {})},
        packages=package_versions(),
        cost=cost,
        created=datetime.now(timezone.utc),
        snapshot=snapshot,
    )
    body = result.model_dump_json(indent=1).encode()
    state.write_manifest_bytes(body)
    if complete:
        # The store's manifest describes the run that filled the cube's last time steps: a late
        # re-commit of an older run leaves a newer run's manifest alone, while re-committing after
        # a crash between publishing and this write repairs it.
        latest = read_manifest(state.store)
        is_tail = bool(indices) and indices[-1] + 1 == len(committed_bins)
        if is_tail or latest is None or latest.run_id == run_id:
            fs.put_bytes(manifest_uri(state.store), body)
        log.info(
            "committed run %s: %d tasks, time steps %d -> %d in %.2f s",
            run_id, len(planned), committed, len(committed_bins), result.timings["commit_seconds"],
        )
    else:
        first = ", ".join((list(failed) + missing)[:5])
        log.warning(
            "run %s is NOT committed: %d of %d tasks done, %d failed, %d missing (e.g. %s); "
            "the cube is unchanged, resume the run to finish it",
            run_id, len(done), len(planned), len(failed), len(missing), first,
        )
    return result


def manifest_is_current(store: str) -> bool:
    """Whether the store's manifest describes exactly its committed time steps (True for no cube)."""
    info = cube.cube_info(store)
    if info is None or not info.committed_bins:
        return True
    latest = read_manifest(store)
    return latest is not None and [b.start for b in latest.committed_bins] == [b.start for b in info.committed_bins]


def repair_manifest(store: str) -> Manifest | None:
    """Make the store's manifest describe its committed time steps again; return it.

    A commit publishes the time steps and then writes the manifest: one that died in between
    leaves a cube whose manifest is missing or older than its time axis (a reader would be told
    less than the cube holds). This commits again (idempotent) the run that filled the last
    committed time step, which writes its manifest. Returns the store's manifest afterwards.
    """
    from .state import list_runs

    store = fs.normalize(store)
    if manifest_is_current(store):
        return read_manifest(store)
    info = cube.cube_info(store)
    assert info is not None
    last = info.committed_bins[-1].start
    for run_id in list_runs(store):
        try:
            record = RunState(store, run_id).read_record()
        except (FileNotFoundError, ValueError):
            continue
        if record.bins and max(b.start for b in record.bins) == last:
            if commit_run(store, run_id).complete and manifest_is_current(store):
                log.warning("repaired the manifest of %s from run %s (its commit had stopped before it)", store, run_id)
                break
    return read_manifest(store)


def summary(manifest: Manifest) -> str:
    """One line describing a manifest, for CLIs and logs."""
    if manifest.complete:
        return (
            f"run {manifest.run_id} committed: {len(manifest.run_bins)} time step(s), {manifest.tasks_done} tasks, "
            f"cube now has {len(manifest.committed_bins)} time step(s)"
        )
    shown = list(manifest.failures)[:3] + manifest.missing[:3]
    return (
        f"run {manifest.run_id} NOT committed: {manifest.tasks_done}/{manifest.tasks_planned} tasks done, "
        f"{manifest.tasks_failed} failed, {len(manifest.missing)} missing (e.g. {', '.join(shown)}); cube unchanged"
    )
