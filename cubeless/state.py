"""A run's state in the store: its record, its task list, and one marker per finished attempt.

Everything lives under ``<store>/_cubeless/runs/<run_id>/``::

    run.json               RunRecord
    tasks.json             the task list's header, then its rows and item table
    tasks.rows.zst         (:mod:`cubeless.tasklist`): each minimal item stored once per run
    items.ndjson.zst
    done/<task_id>.json    TaskResult of the attempt that finished the task
    failed/<task_id>.json  TaskResult of the latest failed attempt
    dead/<task_id>.json    DeadMarker: the task's last try (AWS: receive count = the queue's
                           maxReceiveCount) started or failed; SQS dead-letters it next
    manifest.json          written by the commit step

Runs planned before the item table (``tasks.ndjson``, one whole Task per line, and
``tasks.index.json``) are still read, through the same methods.

Every write is a single-object put (atomic on S3, temp-file-and-rename locally), so concurrent
workers never see a torn marker. "Which tasks are done" is ONE listing of ``done/`` (paginated on
S3, 1,000 keys per page), never one read per task.

One run at a time per cube: :class:`CubeLock` (``<store>/_cubeless/lock``) is held by a run from
the end of its planning to its commit (on AWS: by the Step Functions execution, from its planner to
its commit or failure); a second run of the same store is refused with one line.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from . import fs
from .errors import UserError
from .models import RunRecord, Task, TaskResult, task_id_stems
from .spec import CubeSpec
from .tasklist import HEADER, PendingTasks, TaskList, write_task_list

RUNS_PREFIX = "_cubeless/runs"
_MARKER_SUFFIX = ".json"


class RunState:
    """Read and write one run's state. Cheap to construct (no I/O)."""

    def __init__(self, store: str, run_id: str) -> None:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run id {run_id!r} is not a safe key")
        self.store = fs.normalize(store)
        self.run_id = run_id
        self.root = fs.join(self.store, RUNS_PREFIX, run_id)

    def __repr__(self) -> str:
        return f"RunState({self.store!r}, {self.run_id!r})"

    # -- locations --------------------------------------------------------------------------------
    @property
    def record_uri(self) -> str:
        return fs.join(self.root, "run.json")

    @property
    def tasks_uri(self) -> str:
        """The task list (its header; :mod:`cubeless.tasklist`)."""
        return fs.join(self.root, HEADER)

    @property
    def legacy_tasks_uri(self) -> str:
        """The task list of a run planned before the item table (one whole Task per line)."""
        return fs.join(self.root, "tasks.ndjson")

    @property
    def index_uri(self) -> str:
        """The legacy task list's compact index."""
        return fs.join(self.root, "tasks.index.json")

    @property
    def manifest_uri(self) -> str:
        return fs.join(self.root, "manifest.json")

    def done_uri(self, task_id: str) -> str:
        return fs.join(self.root, "done", task_id + _MARKER_SUFFIX)

    def failed_uri(self, task_id: str) -> str:
        return fs.join(self.root, "failed", task_id + _MARKER_SUFFIX)

    def dead_uri(self, task_id: str) -> str:
        return fs.join(self.root, "dead", task_id + _MARKER_SUFFIX)

    # -- record -----------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the run has a record."""
        return fs.exists(self.record_uri)

    def write_record(self, record: RunRecord) -> None:
        if record.run_id != self.run_id:
            raise ValueError(f"record is for run {record.run_id}, not {self.run_id}")
        fs.put_bytes(self.record_uri, record.model_dump_json(indent=1).encode())

    def read_record(self) -> RunRecord:
        """The run record; FileNotFoundError when the run was never planned."""
        return RunRecord.model_validate_json(fs.get_bytes(self.record_uri))

    # -- task list --------------------------------------------------------------------------------
    def write_tasks(self, tasks: Iterable[Task], *, spec: CubeSpec | None = None) -> str:
        """Stream the planned tasks into the task list (item table + compact rows); return its URI.

        One pass; each item is encoded once, memory holds only the item ids seen. The files appear
        whole or not at all. ``spec`` is recorded (default: the first task's), so that a run
        without tasks can still be committed.
        """
        write_task_list(self.root, tasks, run_id=self.run_id, spec=spec, atomic=_AtomicWriter)
        return self.tasks_uri

    def task_list(self) -> TaskList | None:
        """The stored task list (streaming API), None for a legacy run; FileNotFoundError if none."""
        try:
            return TaskList.open(self.root)
        except FileNotFoundError:
            if fs.exists(self.legacy_tasks_uri):
                return None
            raise

    def iter_tasks(self, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[Task]:
        """The planned tasks (except the ids in ``skip``), streamed in plan order."""
        tl = self.task_list()
        if tl is not None:
            yield from tl.tasks(skip)
            return
        fsys, path = fs.filesystem(self.legacy_tasks_uri)
        with fsys.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    task = Task.model_validate_json(line)
                    if task.task_id not in skip:
                        yield task

    def iter_task_ids(self) -> Iterator[str]:
        """Planned task ids in plan order, streamed (never a Task built)."""
        tl = self.task_list()
        if tl is not None:
            yield from tl.ids()
        else:
            yield from self.read_index()["ids"]

    def pending(self, done: set[str] | None = None) -> PendingTasks:
        """The planned tasks not in ``done`` (default: the done markers): sized, streamed on iteration."""
        done = self.done_ids() if done is None else done
        return PendingTasks(self.iter_task_ids, self.iter_tasks, done)

    def read_index(self) -> dict[str, Any]:
        """The compact task index: ``count``, ``ids``, ``spec``, ``items`` (item ids) and
        ``task_items`` (per task, positions in ``items``); streamed from the rows, no Task built."""
        tl = self.task_list()
        if tl is not None:
            ids: list[str] = []
            refs: list[list[int]] = []
            for row in tl.rows():
                ids.append(row.task_id)
                refs.append(row.items)
            h = tl.header
            spec_doc = None if h.spec is None else h.spec.model_dump(mode="json")
            return {"count": h.count, "ids": ids, "spec": spec_doc, "items": list(h.item_ids), "task_items": refs}
        return self._legacy_index()

    def _legacy_index(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(fs.get_bytes(self.index_uri))
            return doc
        except FileNotFoundError:
            pass
        ids: list[str] = []
        item_pos: dict[str, int] = {}
        task_items: list[list[int]] = []
        spec_doc: Any = None
        for task in self.iter_tasks():
            if spec_doc is None:
                spec_doc = task.spec.model_dump(mode="json")
            ids.append(task.task_id)
            task_items.append(
                [item_pos.setdefault(i["id"], len(item_pos)) for i in task.items if isinstance(i.get("id"), str)]
            )
        return {"count": len(ids), "ids": ids, "spec": spec_doc, "items": list(item_pos), "task_items": task_items}

    def empty_bins(self) -> list[str]:
        """Labels of the run's bins no task has a scene for (streamed from the compact rows)."""
        tl = self.task_list()
        if tl is None:
            from .plan import empty_bins

            return empty_bins(self.iter_tasks())
        has: dict[int, bool] = {}
        for row in tl.rows():
            has[row.bin] = has.get(row.bin, False) or bool(row.items)
        return sorted(tl.header.bins[b].label for b, any_scene in has.items() if not any_scene)

    def task_ids(self) -> list[str]:
        """Planned task ids, in plan order."""
        return list(self.iter_task_ids())

    def spec(self) -> CubeSpec | None:
        """The run's spec (as recorded with its tasks), or None for a run without tasks."""
        tl = self.task_list()
        if tl is not None:
            return tl.header.spec
        doc = self.read_index().get("spec")
        return None if doc is None else CubeSpec.model_validate(doc)

    # -- markers ----------------------------------------------------------------------------------
    def mark_done(self, result: TaskResult) -> None:
        """Record the attempt that finished a task (a done marker beats any failed one)."""
        if result.status != "done":
            raise ValueError(f"mark_done needs a done result, got {result.status}")
        fs.put_bytes(self.done_uri(result.task_id), result.model_dump_json().encode())
        fs.delete(self.failed_uri(result.task_id))
        fs.delete(self.dead_uri(result.task_id))

    def mark_failed(self, result: TaskResult) -> None:
        """Record a failed attempt; the latest one replaces earlier ones."""
        if result.status != "failed":
            raise ValueError(f"mark_failed needs a failed result, got {result.status}")
        fs.put_bytes(self.failed_uri(result.task_id), result.model_dump_json().encode())

    def mark_dead(self, task_id: str, *, receive_count: int, final: bool, error: str | None = None) -> None:
        """Record that a task's last try started (``final=False``, written before the try, so that
        a try that dies with its Lambda still settles the task) or failed (``final=True``).

        SQS dead-letters the message on its next receive; :meth:`mark_done` deletes the marker
        if the last try succeeds after all.
        """
        marker = DeadMarker(task_id=task_id, receive_count=receive_count, final=final, error=error, at=time.time())
        fs.put_bytes(self.dead_uri(task_id), marker.model_dump_json().encode())

    def dead_ids(self) -> set[str]:
        """Ids with a dead marker: one listing of ``dead/``."""
        return _marker_ids(fs.list_names(fs.join(self.root, "dead")))

    def dead_markers(self) -> dict[str, "DeadMarker"]:
        """Dead markers by task id (dead tasks are few: one listing plus a read each)."""
        ids = sorted(self.dead_ids())
        got = fs.get_many(self.dead_uri(i) for i in ids)
        return {i: DeadMarker.model_validate_json(got[self.dead_uri(i)]) for i in ids if self.dead_uri(i) in got}

    def clear_dead(self, task_ids: Iterable[str] | None = None) -> int:
        """Delete dead markers (all, or of ``task_ids``) before their tasks are queued again; return the count."""
        ids = self.dead_ids() if task_ids is None else self.dead_ids() & set(task_ids)
        for i in ids:
            fs.delete(self.dead_uri(i))
        return len(ids)

    def progress(self, task_count: int, *, last_try_seconds: float) -> "RunProgress":
        """How far the run is, exactly, from its own markers (never from queue counts).

        A task is settled when it has a done marker, or a dead marker that is final or older
        than ``last_try_seconds`` (the queue's visibility timeout: a last try that old cannot
        still be running; its message is dead-lettered on its next receive). Two listings,
        plus one read per dead marker.
        """
        done = self.done_ids()
        dead = {i: m for i, m in self.dead_markers().items() if i not in done}
        now = time.time()
        settled_dead = sorted(i for i, m in dead.items() if m.final or now - m.at > last_try_seconds)
        return RunProgress(task_count=task_count, done=len(done), dead=settled_dead, last_tries=len(dead) - len(settled_dead))

    def done_ids(self) -> set[str]:
        """Ids of finished tasks: one listing of ``done/``; on an object store, for a run of more
        than :data:`LIST_SPLIT_ABOVE` tasks, listings by task-id stem, concurrently
        (:func:`~cubeless.models.task_id_stems`, :func:`cubeless.fs.list_names_by_stems`)."""
        url = fs.join(self.root, "done")
        if fs.is_remote(url):
            try:
                record = self.read_record()
            except (FileNotFoundError, ValueError):
                record = None
            if record is not None and record.task_count > LIST_SPLIT_ABOVE and record.bins:
                return _marker_ids(fs.list_names_by_stems(url, task_id_stems(record.bins)))
        return _marker_ids(fs.list_names(url))

    def failed_ids(self) -> set[str]:
        """Ids with a failed marker: one listing of ``failed/`` (may include tasks done later)."""
        return _marker_ids(fs.list_names(fs.join(self.root, "failed")))

    def failures(self) -> dict[str, TaskResult]:
        """Latest failed attempt per task id (reads only the failed markers)."""
        ids = sorted(self.failed_ids())
        got = fs.get_many(self.failed_uri(i) for i in ids)
        out: dict[str, TaskResult] = {}
        for i in ids:
            body = got.get(self.failed_uri(i))
            if body is not None:
                out[i] = TaskResult.model_validate_json(body)
        return out

    def done_results(self, ids: Iterable[str] | None = None, *, sample: int | None = None, seed: int = 0) -> list[TaskResult]:
        """Bodies of done markers (all, the given ids, or a reproducible random sample of them)."""
        chosen = sorted(self.done_ids() if ids is None else set(ids))
        if sample is not None and len(chosen) > sample:
            chosen = sorted(random.Random(seed).sample(chosen, sample))
        got = fs.get_many(self.done_uri(i) for i in chosen)
        return [TaskResult.model_validate_json(got[u]) for u in (self.done_uri(i) for i in chosen) if u in got]

    # -- manifest ---------------------------------------------------------------------------------
    def write_manifest_bytes(self, data: bytes) -> None:
        fs.put_bytes(self.manifest_uri, data)


class DeadMarker(BaseModel):
    """``dead/<task_id>.json``: the task's last try started (``final`` False) or failed (True)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    receive_count: int
    final: bool
    error: str | None = None
    at: float  #: Unix time the marker was written


class RunProgress(BaseModel):
    """A run's progress from its markers: done, dead-lettered (settled), and what is left."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_count: int
    done: int
    dead: list[str]  #: ids of settled dead tasks (dead-lettered, or their last try is over)
    last_tries: int = 0  #: tasks whose last try may still be running

    @property
    def remaining(self) -> int:
        return max(0, self.task_count - self.done - len(self.dead))

    @property
    def complete(self) -> bool:
        """Every task is done or dead: the run can be judged (committed, or failed naming the dead)."""
        return self.remaining == 0


def list_runs(store: str) -> list[str]:
    """Ids of the runs with state in ``store`` (one listing of ``_cubeless/runs/``), sorted."""
    uri = fs.join(fs.normalize(store), RUNS_PREFIX)
    if not fs.is_remote(uri):
        try:
            return sorted(e.name for e in os.scandir(fs.local_path(uri)) if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []
    fsys, path = fs.filesystem(uri)
    fsys.invalidate_cache(path)
    try:
        entries = fsys.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def _marker_ids(names: Iterable[str]) -> set[str]:
    return {n[: -len(_MARKER_SUFFIX)] for n in names if n.endswith(_MARKER_SUFFIX) and not n.startswith(".")}


class _AtomicWriter:
    """A binary stream whose object appears only on a clean close (local rename / S3 upload)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._tmp: str | None = None
        self._f: Any = None

    def __enter__(self) -> "_AtomicWriter":
        if fs.is_remote(self.uri):
            fsys, path = fs.filesystem(self.uri)
            # s3fs uploads a multipart object that exists only once closed.
            self._f = fsys.open(path, "wb", block_size=16 * 2**20)
        else:
            path = fs.local_path(self.uri)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._tmp = f"{path}.{uuid.uuid4().hex}.partial"
            self._f = open(self._tmp, "wb", buffering=2**20)
        return self

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._f.close()
            if self._tmp is not None:
                os.replace(self._tmp, fs.local_path(self.uri))
            return
        if self._tmp is not None:
            self._f.close()
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        else:
            try:
                self._f.discard()  # s3fs: abort the multipart upload
            except Exception:
                pass


#: Runs with more tasks than this list their done markers by task-id stem, concurrently (one
#: listing of 1,000 keys a page is ~50 ms on S3: a million markers would be ~1 minute per round).
LIST_SPLIT_ABOVE = 20_000


# -- the cube lock ----------------------------------------------------------------------------------
LOCK_KEY = "_cubeless/lock"
#: A remote lock whose heartbeat is older than this (seconds) belongs to a run that died.
LOCK_STALE_AFTER = 300.0
#: An execution's lock (no heartbeat) is stale this long (seconds) after it was taken, whatever
#: ``is_alive`` says: the state machine's timeout, which no execution outlives (the stack's default).
EXECUTION_TIMEOUT = 7 * 24 * 3600.0


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def _precondition_failed(exc: OSError) -> bool:
    """Whether an s3fs error is S3's 412 PreconditionFailed (a conditional write or delete lost)."""
    import errno

    return isinstance(exc, FileExistsError) or exc.errno == errno.EINVAL or "precondition" in str(exc).lower()


class CubeLocked(UserError):
    """Another run of the same cube (store) is in progress; the CLI exits 2 with this one line."""


def _process_start(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot, from /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _utc_time(value: Any) -> Any:
    """An ISO time of a lock record as an aware datetime (naive = UTC), None when it is not one."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


class CubeLock:
    """One run at a time per cube: ``<store>/_cubeless/lock``, held from planning to commit.

    * **local store**: the lock file is created if needed and held with ``flock(LOCK_EX|LOCK_NB)``
      for the whole run. The kernel drops the lock when the process dies however it dies, so a
      killed run never leaves a stale lock; the file's content (run id, start, pid, host) is only
      there to name the holder.
    * **object store** (``s3://``): S3 conditional writes, no check-then-act. The lock object is
      created with ``If-None-Match: *``; its ``heartbeat`` is rewritten every ``stale_after / 10``
      seconds by a daemon thread with ``If-Match: <the ETag it last wrote>`` (a holder whose lock
      was taken over stops, never overwriting it); a lock whose heartbeat is older than
      ``stale_after``, or whose holder is a dead process on this host, is stale and is taken over
      with ``If-Match: <its ETag>`` (two contenders: one wins); release deletes with ``If-Match``.

    * **an execution's lock** (``execution=``, object stores only): held by a Step Functions
      execution across Lambda invocations, which cannot keep a heartbeat thread alive. The record
      names the execution (its ARN) and when it ``expires`` (taken + ``execution_timeout``, the
      state machine's timeout). It is stale once it expired or ``is_alive(holder)`` says its
      execution no longer runs (the caller's check, e.g. Step Functions' DescribeExecution in
      :mod:`cubeless.aws`; without one, only expiry counts), and is then taken over with
      ``If-Match`` as above. Another invocation of the same execution (a retried planner, the
      commit) takes the lock it already holds again, and :meth:`release` removes it even from an
      object that did not take it, as long as the record still names this execution.

    :meth:`acquire` raises :class:`CubeLocked` (a :class:`~cubeless.errors.UserError`) naming the
    holder. Use as a context manager or call :meth:`release`; releasing twice is harmless.
    """

    def __init__(
        self,
        store: str,
        *,
        stale_after: float = LOCK_STALE_AFTER,
        execution: str | None = None,
        is_alive: Callable[[dict[str, Any]], bool] | None = None,
        execution_timeout: float = EXECUTION_TIMEOUT,
    ) -> None:
        self.store = fs.normalize(store)
        self.uri = fs.join(self.store, LOCK_KEY)
        self.stale_after = stale_after
        #: The execution (ARN) this lock is taken for; None for a local run's lock (heartbeat, flock).
        self.execution = execution
        #: ``is_alive(holder)``: whether the execution a lock record names still runs.
        self.is_alive = is_alive
        self.execution_timeout = execution_timeout
        if execution is not None and not fs.is_remote(self.uri):
            raise ValueError(f"an execution's lock needs an object store (s3://), not {self.store}")
        self.record: dict[str, Any] | None = None
        self._fd: int | None = None
        self._stop: Any = None
        self._thread: Any = None
        self._etag: str | None = None  #: ETag of the remote lock object this holder last wrote

    def __repr__(self) -> str:
        return f"CubeLock({self.store!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self.record is not None

    def _new_record(self, run_id: str) -> dict[str, Any]:
        import socket
        from datetime import datetime, timedelta, timezone

        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.execution is not None:
            expires = datetime.now(timezone.utc) + timedelta(seconds=self.execution_timeout)
            return {
                "run_id": run_id,
                "execution": self.execution,
                "started": now,
                "expires": expires.isoformat(timespec="seconds"),
                "token": uuid.uuid4().hex,
            }
        return {
            "run_id": run_id,
            "started": now,
            "heartbeat": now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "token": uuid.uuid4().hex,
        }

    def holder(self) -> dict[str, Any] | None:
        """The lock's recorded content (who holds or last held it), None if absent or unreadable."""
        try:
            doc = json.loads(fs.get_bytes(self.uri) or b"null")
        except (FileNotFoundError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _refuse(self, holder: dict[str, Any] | None) -> CubeLocked:
        if not holder:
            who = "run id unknown"
        else:
            who = f"run id {holder.get('run_id', '?')}, started {holder.get('started', '?')}"
            if holder.get("execution"):
                who += f", execution {holder['execution']}"
            elif holder.get("pid"):
                who += f", pid {holder['pid']} on {holder.get('host', '?')}"
        return CubeLocked(
            f"a run of this cube is in progress ({who}); wait for it to finish or stop it, then run the "
            f"same command again (it resumes), or write to another `store` (lock: {self.uri})"
        )

    # -- acquire / release ------------------------------------------------------------------------
    def acquire(self, run_id: str) -> "CubeLock":
        """Take the lock for ``run_id`` or raise :class:`CubeLocked`. A no-op if already held."""
        if self.held:
            return self
        if fs.is_remote(self.uri):
            self._acquire_remote(run_id)
        else:
            self._acquire_local(run_id)
        return self

    def _acquire_local(self, run_id: str) -> None:
        import fcntl

        from .errors import PlanError

        path = fs.local_path(self.uri)
        store = fs.local_path(self.store)
        if os.path.exists(store) and not os.path.isdir(store):
            raise PlanError(f"store {self.store} is a file; give a directory path or an s3:// URL for the cube")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = None
                for _ in range(50):  # the holder writes its record right after locking
                    holder = self.holder()
                    if holder:
                        break
                    time.sleep(0.02)
                raise self._refuse(holder) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder unlinked the file as we opened it: lock the new one
                os.close(fd)
                continue
            record = self._new_record(run_id)
            data = json.dumps(record, indent=1).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self._fd, self.record = fd, record
            return

    def _s3(self) -> tuple[Any, str, str]:
        """(s3fs filesystem, bucket, key) of the remote lock object."""
        fsys, path = fs.filesystem(self.uri)
        bucket, _, key = path.partition("/")
        return fsys, bucket, key

    def _conditional(self) -> bool:
        """Whether the store's filesystem is S3 (s3fs), where writes and deletes take conditions."""
        fsys, _, _ = self._s3()
        return hasattr(fsys, "call_s3")

    def _read_remote(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lock object's ETag (HEAD) and then its record, (None, None) if absent. The body is
        read after the HEAD, so it is that version or a newer one: a takeover conditioned on the
        ETag fails if the object changed in between."""
        fsys, bucket, key = self._s3()
        if not self._conditional():  # e.g. memory://: the content's digest stands for the ETag
            try:
                data = fs.get_bytes(self.uri)
            except FileNotFoundError:
                return None, None
            holder = self.holder()
            return (holder if holder is not None else {}), _digest(data)
        try:
            etag = fsys.call_s3("head_object", Bucket=bucket, Key=key).get("ETag")
        except FileNotFoundError:
            return None, None
        holder = self.holder()
        return (holder if holder is not None else {}), etag

    def _put_remote(self, record: dict[str, Any], **condition: str) -> str | None:
        """Write the lock object under an S3 condition (``IfNoneMatch="*"`` to take it,
        ``IfMatch=etag`` to renew or take over a stale one); its new ETag, or None when the
        condition failed (someone else holds or took it)."""
        fsys, bucket, key = self._s3()
        data = json.dumps(record, indent=1).encode()
        if not self._conditional():  # create-only is atomic (fsspec mode="create"); If-Match is emulated
            if "IfNoneMatch" in condition:
                try:
                    fsys.pipe_file(f"{bucket}/{key}", data, mode="create")
                except FileExistsError:
                    return None
            else:
                _, current = self._read_remote()
                if current != condition.get("IfMatch"):
                    return None
                fs.put_bytes(self.uri, data)
            return _digest(data)
        try:
            resp = fsys.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except FileNotFoundError:  # If-Match on an object deleted meanwhile
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise
        fsys.invalidate_cache(f"{bucket}/{key}")
        return str(resp.get("ETag"))

    def _acquire_remote(self, run_id: str) -> None:
        for _ in range(3):
            record = self._new_record(run_id)
            etag = self._put_remote(record, IfNoneMatch="*")
            if etag is None:
                holder, held_etag = self._read_remote()
                if holder is None:
                    continue  # released meanwhile: try to create it again
                assert held_etag is not None
                if self._ours(holder):  # another invocation of this execution took it (a retry)
                    if holder.get("run_id") == run_id:
                        record, etag = holder, held_etag
                    else:
                        record = {**holder, "run_id": run_id}
                        etag = self._put_remote(record, IfMatch=held_etag)
                elif not self._is_stale(holder):
                    raise self._refuse(holder)
                else:  # stale: take it over only if it is still that lock object (one contender wins)
                    etag = self._put_remote(record, IfMatch=held_etag)
                if etag is None:
                    continue
            self.record, self._etag = record, etag
            if self.execution is None:
                self._start_heartbeat()
            return
        raise self._refuse(self.holder())

    def _ours(self, holder: dict[str, Any]) -> bool:
        """Whether a lock record names this lock's execution."""
        return self.execution is not None and holder.get("execution") == self.execution

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        import socket
        from datetime import datetime, timezone

        now = datetime.now(timezone.utc)
        if holder.get("execution"):  # an execution's lock: no heartbeat, no process to look at
            expires = _utc_time(holder.get("expires"))
            if expires is None or now >= expires:
                return True
            return self.is_alive is not None and not self.is_alive(holder)
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"], holder.get("pid_start")):
                return True
        beat = _utc_time(holder.get("heartbeat"))
        return beat is None or (now - beat).total_seconds() > self.stale_after

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        def beat() -> None:
            from datetime import datetime, timezone

            while not self._stop.wait(max(1.0, self.stale_after / 10)):
                if self.record is None or self._etag is None:
                    return
                record = {**self.record, "heartbeat": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                try:
                    etag = self._put_remote(record, IfMatch=self._etag)
                except OSError:
                    continue  # S3 unavailable: try again at the next beat
                if etag is None:
                    return  # lost (taken over as stale): never overwrite another run's lock
                if not self._stop.is_set():
                    self.record, self._etag = record, etag
                else:
                    self._etag = etag

        self._thread = threading.Thread(target=beat, name="cubeless-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> bool:
        """Give the lock up (and remove the lock object, if it is still ours); whether it was removed.

        An execution's lock is removed by any invocation of that execution: from an object that
        did not take it, the lock object is deleted only if its record names :attr:`execution`
        (``If-Match`` on the ETag read with it), so another execution's lock is never touched.
        """
        if self.record is None:
            if self.execution is None:
                return False
            holder, etag = self._read_remote()
            return holder is not None and self._ours(holder) and self._delete_remote(etag)
        if self._stop is not None:  # the heartbeat stops before the record is dropped
            self._stop.set()
            self._thread.join(5)
        self.record = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.unlink(fs.local_path(self.uri))  # still locked by us: nobody holds this inode
            except FileNotFoundError:
                pass
            os.close(fd)
            return True
        etag, self._etag = self._etag, None
        return self._delete_remote(etag)

    def _delete_remote(self, etag: str | None) -> bool:
        """Delete the lock object only if it is still the one with ``etag`` (S3 ``If-Match``)."""
        if etag is None:
            return False
        if not self._conditional():
            if self._read_remote()[1] != etag:
                return False
            fs.delete(self.uri)
            return True
        fsys, bucket, key = self._s3()
        try:
            fsys.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
            return False
        finally:
            fsys.invalidate_cache(f"{bucket}/{key}")
        return True

    def __enter__(self) -> "CubeLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
