"""A run's state in the store: its record, its task list, and one marker per finished attempt.

Everything lives under ``<store>/_cubeless/runs/<run_id>/``::

    run.json               RunRecord
    tasks.ndjson           planned tasks, one Task per line (the SQS message bodies)
    tasks.index.json       compact companion: task ids, the spec, item ids (what the commit reads)
    done/<task_id>.json    TaskResult of the attempt that finished the task
    failed/<task_id>.json  TaskResult of the latest failed attempt
    manifest.json          written by the commit step

Every write is a single-object put (atomic on S3, temp-file-and-rename locally), so concurrent
workers never see a torn marker. "Which tasks are done" is ONE listing of ``done/`` (paginated on
S3, 1,000 keys per page), never one read per task.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any, Iterable, Iterator

from . import fs
from .models import RunRecord, Task, TaskResult
from .spec import CubeSpec

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
        return fs.join(self.root, "tasks.ndjson")

    @property
    def index_uri(self) -> str:
        return fs.join(self.root, "tasks.index.json")

    @property
    def manifest_uri(self) -> str:
        return fs.join(self.root, "manifest.json")

    def done_uri(self, task_id: str) -> str:
        return fs.join(self.root, "done", task_id + _MARKER_SUFFIX)

    def failed_uri(self, task_id: str) -> str:
        return fs.join(self.root, "failed", task_id + _MARKER_SUFFIX)

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
        """Stream the planned tasks to ``tasks.ndjson`` (and its compact index); return its URI.

        One pass, constant memory for the task bodies; the object appears whole or not at all.
        ``spec`` is recorded in the index (default: the first task's), so that a run without
        tasks can still be committed.
        """
        ids: list[str] = []
        seen: set[str] = set()
        item_pos: dict[str, int] = {}
        task_items: list[list[int]] = []
        spec_doc: Any = None if spec is None else spec.model_dump(mode="json")
        with _AtomicWriter(self.tasks_uri) as out:
            for task in tasks:
                tid = task.task_id
                if task.run_id != self.run_id:
                    raise ValueError(f"task {tid} belongs to run {task.run_id}, not {self.run_id}")
                if tid in seen:
                    raise ValueError(f"task id {tid} is planned twice; each tile x bin is one task")
                seen.add(tid)
                if spec_doc is None:
                    spec_doc = task.spec.model_dump(mode="json")
                out.write(task.model_dump_json().encode())
                out.write(b"\n")
                ids.append(tid)
                refs = []
                for item in task.items:
                    iid = item.get("id")
                    if isinstance(iid, str):
                        refs.append(item_pos.setdefault(iid, len(item_pos)))
                task_items.append(refs)
        index = {"count": len(ids), "ids": ids, "spec": spec_doc, "items": list(item_pos), "task_items": task_items}
        fs.put_bytes(self.index_uri, json.dumps(index, separators=(",", ":")).encode())
        return self.tasks_uri

    def iter_tasks(self) -> Iterator[Task]:
        """The planned tasks, streamed line by line."""
        fsys, path = fs.filesystem(self.tasks_uri)
        with fsys.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield Task.model_validate_json(line)

    def read_index(self) -> dict[str, Any]:
        """The compact task index (ids, spec, item ids); rebuilt from the task list if absent."""
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

    def task_ids(self) -> list[str]:
        """Planned task ids, in plan order (from the compact index)."""
        return list(self.read_index()["ids"])

    def spec(self) -> CubeSpec | None:
        """The run's spec (as carried by its tasks), or None for a run without tasks."""
        doc = self.read_index().get("spec")
        return None if doc is None else CubeSpec.model_validate(doc)

    # -- markers ----------------------------------------------------------------------------------
    def mark_done(self, result: TaskResult) -> None:
        """Record the attempt that finished a task (a done marker beats any failed one)."""
        if result.status != "done":
            raise ValueError(f"mark_done needs a done result, got {result.status}")
        fs.put_bytes(self.done_uri(result.task_id), result.model_dump_json().encode())
        fs.delete(self.failed_uri(result.task_id))

    def mark_failed(self, result: TaskResult) -> None:
        """Record a failed attempt; the latest one replaces earlier ones."""
        if result.status != "failed":
            raise ValueError(f"mark_failed needs a failed result, got {result.status}")
        fs.put_bytes(self.failed_uri(result.task_id), result.model_dump_json().encode())

    def done_ids(self) -> set[str]:
        """Ids of finished tasks: one listing of ``done/``."""
        return _marker_ids(fs.list_names(fs.join(self.root, "done")))

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
