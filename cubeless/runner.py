"""The local runner: plan -> tasks on a pool of worker processes -> commit.

It applies the same policy as the AWS pipeline: each attempt has a deadline (the Lambda's 90 s),
a failed attempt is retried up to ``retries`` times with exponential backoff and full jitter, and a
task that exhausts its tries is parked in the run's failed list (the local dead-letter queue).
A worker process that dies or overruns its deadline is killed and replaced; its task is retried.
A worker whose attempt failed is replaced too, so no process state (GDAL's cache of a 404, say)
outlives the attempt that produced it.
Running the same spec again resumes: it reuses the planned task list and does only what is missing.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sized

from .hrefs import HrefPolicy
from .models import Manifest, Task, TaskResult
from .plan import DEFAULT_MAX_TASKS
from .prepare import Prepared, prepare_run
from .spec import CubeSpec
from .state import CubeLock, CubeLocked, RunState

if TYPE_CHECKING:
    from .search import SearchStats



@dataclass(frozen=True)
class RunPolicy:
    """How tasks are executed and retried (the AWS pipeline's defaults)."""

    workers: int = max(1, os.cpu_count() or 1)  #: worker processes
    timeout: float = 90.0  #: seconds one attempt may take before its process is killed
    retries: int = 5  #: extra attempts after the first: a task is tried at most 1 + retries times
    backoff: float = 0.5  #: base delay (s) before a retry; doubles per attempt, full jitter, max 20 s


@dataclass(frozen=True)
class Progress:
    """A snapshot handed to the progress callback after every finished attempt."""

    total: int  #: tasks this invocation had to do
    done: int
    failed: int  #: tasks that exhausted their tries
    retried: int  #: failed attempts that were retried
    last: TaskResult | None = None


@dataclass(frozen=True)
class PoolOutcome:
    """What the pool did: results of finished tasks and of tasks that exhausted their tries."""

    done: list[TaskResult] = field(default_factory=list)
    failed: list[TaskResult] = field(default_factory=list)
    retried: int = 0
    seconds: float = 0.0


# --- worker processes -----------------------------------------------------------------------


def _worker_main(conn: Connection, policy: HrefPolicy | None) -> None:
    """Body of a worker process: execute task after task until told to stop."""
    # Ctrl-C reaches the whole process group: the parent handles it (and stops the workers);
    # a worker taking it too would print a traceback per process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .execute import execute_task

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task = Task.model_validate_json(msg)
        try:
            result = execute_task(task, policy=policy)
            conn.send(("ok", result.model_dump_json()))
        except Exception as exc:  # reported to the parent, which applies the retry policy
            conn.send(("err", f"{type(exc).__name__}: {exc}"[:2000]))


@dataclass
class _Slot:
    proc: mp.process.BaseProcess
    conn: Connection
    task: Task | None = None
    attempt: int = 0
    started: float = 0.0


class _Pool:
    def __init__(self, n: int, policy: HrefPolicy | None) -> None:
        self._ctx = mp.get_context("spawn")  # GDAL and thread pools do not survive fork safely
        self._policy = policy
        self.slots = [self._spawn() for _ in range(n)]

    def _spawn(self) -> _Slot:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self._policy), daemon=True)
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def replace(self, slot: _Slot) -> _Slot:
        """Kill a slot's process (dead, hung or overdue) and start a fresh one in its place."""
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(5)
        slot.conn.close()
        fresh = self._spawn()
        self.slots[self.slots.index(slot)] = fresh
        return fresh

    def close(self) -> None:
        for s in self.slots:
            try:
                if s.task is None and s.proc.is_alive():
                    s.conn.send(None)
                elif s.task is not None:  # interrupted mid-task: its attempt is abandoned
                    s.proc.kill()
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5
        for s in self.slots:
            s.proc.join(max(0.0, deadline - time.monotonic()))
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(1)
            s.conn.close()


def run_tasks(
    tasks: Iterable[Task],
    *,
    state_for: Callable[[Task], RunState],
    policy: RunPolicy = RunPolicy(),
    hrefs: HrefPolicy | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> PoolOutcome:
    """Run tasks on worker processes with per-attempt deadlines and retries.

    Done markers are written by the worker (``execute_task``); the latest failed attempt of a task
    is recorded here with ``state_for(task).mark_failed`` so the manifest can name its last error.
    """
    # First attempts are taken from ``tasks`` as workers free up (a resumed run's stream is never
    # all in memory); retries wait in ``delayed`` and then in ``queue``.
    fresh: Iterator[Task] | None = iter(tasks)
    total = len(tasks) if isinstance(tasks, Sized) else None
    queue: deque[tuple[Task, int]] = deque()
    if total is None:
        queue.extend((t, 1) for t in tasks)
        total, fresh = len(queue), None
    if not total:
        return PoolOutcome()
    delayed: list[tuple[float, int, Task, int]] = []  # (ready at, tiebreak, task, attempt)
    done: list[TaskResult] = []
    failed: list[TaskResult] = []
    retried = 0
    seq = 0
    t_start = time.monotonic()
    pool = _Pool(min(policy.workers, total), hrefs)

    def report(last: TaskResult | None) -> None:
        if progress:
            progress(Progress(total, len(done), len(failed), retried, last))

    def attempt_failed(task: Task, attempt: int, error: str, seconds: float) -> None:
        nonlocal retried, seq
        result = TaskResult(
            task_id=task.task_id, status="failed", attempts=attempt, error=error, seconds=round(seconds, 3)
        )
        try:
            state_for(task).mark_failed(result)
        except OSError as exc:  # the store's disk is full (or gone): the result is kept here and the
            # caller reports it; the run stays resumable (a task without a done marker is redone)
            result = result.model_copy(update={"error": f"{error} (its failed marker could not be written: {exc})"})
        if attempt <= policy.retries:
            retried += 1
            delay = random.uniform(0, min(20.0, policy.backoff * 2 ** (attempt - 1)))
            seq += 1
            heapq.heappush(delayed, (time.monotonic() + delay, seq, task, attempt + 1))
        else:
            failed.append(result)
        report(result)

    try:
        while queue or delayed or fresh is not None or any(s.task is not None for s in pool.slots):
            now = time.monotonic()
            while delayed and delayed[0][0] <= now:
                _, _, task, attempt = heapq.heappop(delayed)
                queue.append((task, attempt))
            for slot in pool.slots:
                if slot.task is None and not queue and fresh is not None:
                    nxt = next(fresh, None)
                    if nxt is None:
                        fresh = None
                    else:
                        queue.append((nxt, 1))
                if slot.task is None and queue:
                    task, attempt = queue.popleft()
                    try:
                        slot.conn.send(task.model_dump_json())
                    except (BrokenPipeError, OSError):
                        slot = pool.replace(slot)
                        slot.conn.send(task.model_dump_json())
                    slot.task, slot.attempt, slot.started = task, attempt, time.monotonic()
            busy = [s for s in pool.slots if s.task is not None]
            deadlines = [s.started + policy.timeout for s in busy] + [d[0] for d in delayed[:1]]
            wait_s = max(0.0, min(deadlines, default=now + 0.5) - time.monotonic())
            wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=min(wait_s, 1.0))
            now = time.monotonic()
            for slot in busy:
                task, attempt = slot.task, slot.attempt
                assert task is not None
                elapsed = now - slot.started
                message = None
                try:
                    if slot.conn.poll():
                        message = slot.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    slot.task = None
                    kind, body = message
                    if kind == "ok":
                        result = TaskResult.model_validate_json(body).model_copy(update={"attempts": attempt})
                        if attempt > 1:  # the worker does not know which attempt it ran: record it
                            state_for(task).mark_done(result)
                        done.append(result)
                        report(result)
                    else:
                        # A fresh process for the retry: nothing a failed attempt left behind in
                        # this one (GDAL's /vsicurl/ cache remembers a 404 and would fail every
                        # retry without a request; half-open connections, leaked memory) carries over.
                        pool.replace(slot)
                        attempt_failed(task, attempt, body, elapsed)
                elif not slot.proc.is_alive():
                    code = slot.proc.exitcode
                    pool.replace(slot)
                    attempt_failed(task, attempt, f"WorkerDied: worker process exited with code {code}", elapsed)
                elif elapsed > policy.timeout:
                    pool.replace(slot)
                    attempt_failed(task, attempt, f"Timeout: task exceeded {policy.timeout:g} s and was killed", elapsed)
    finally:
        pool.close()
    return PoolOutcome(done=done, failed=failed, retried=retried, seconds=time.monotonic() - t_start)


# --- a whole local run ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    """The result of :func:`run_local`."""

    manifest: Manifest | None  #: None when nothing needed doing and no run exists
    prepared: Prepared
    pool: PoolOutcome
    seconds: float

    @property
    def complete(self) -> bool:
        return self.manifest is None or self.manifest.complete


def run_local(
    spec: CubeSpec,
    *,
    policy: RunPolicy = RunPolicy(),
    hrefs: HrefPolicy | None = None,
    max_tasks: int = DEFAULT_MAX_TASKS,
    progress: Callable[[Progress], None] | None = None,
    on_prepared: Callable[[Prepared], None] | None = None,
    on_search: Callable[[int], None] | None = None,
    search_stats: SearchStats | None = None,
) -> RunOutcome:
    """Plan (or resume), execute every missing task, and commit. Returns the manifest.

    Holds the cube's :class:`~cubeless.state.CubeLock` from the end of planning to the end of the
    commit; raises :class:`~cubeless.state.CubeLocked` if another run of the same store holds it.
    """
    from .commit import commit_run

    t0 = time.perf_counter()
    with CubeLock(spec.store) as lock:  # one run per cube at a time; held until the commit is done
        prepared = prepare_run(spec, max_tasks=max_tasks, lock=lock, on_search=on_search, search_stats=search_stats)
        if on_prepared:
            on_prepared(prepared)
        if prepared.record is None:
            from .commit import manifest_is_current, read_manifest, repair_manifest

            manifest = read_manifest(spec.store)
            if not manifest_is_current(spec.store):  # a commit died after publishing: finish it
                try:
                    lock.acquire("repair-manifest")
                except CubeLocked:
                    pass  # a run in progress will write a newer manifest
                else:
                    manifest = repair_manifest(spec.store)
            return RunOutcome(manifest, prepared, PoolOutcome(), time.perf_counter() - t0)
        record = prepared.record
        state = RunState(spec.store, record.run_id)
        hrefs = hrefs or HrefPolicy.local(spec)
        pool = run_tasks(prepared.todo, state_for=lambda _t: state, policy=policy, hrefs=hrefs, progress=progress)
        manifest = commit_run(
            spec.store,
            record.run_id,
            extra_timings={"plan_s": round(prepared.plan_seconds, 3), "tasks_wall_s": round(pool.seconds, 3)},
        )
    return RunOutcome(manifest, prepared, pool, time.perf_counter() - t0)
