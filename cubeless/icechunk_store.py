"""The Icechunk format: the same cube inside an Icechunk repository, written as one transaction per run.

``format: icechunk`` in the spec stores the cube's Zarr hierarchy (same arrays, chunks, codecs and
attributes as the Zarr format, see :mod:`cubeless.store`) in an Icechunk repository at the store
location; the run state (``_cubeless/``) sits beside the repository's own objects. Readers only
ever see committed snapshots of the ``main`` branch.

A run is one snapshot on ``main`` (design: ``docs/design.md``, "Icechunk format"):

1. **Plan** (:func:`stage_run`): a branch ``run.<run_id>`` is made at main's tip (the run's *base*);
   on it one staging commit grows the time axis over the run's bins and writes the time
   coordinates. A writable session on that branch is forked (:meth:`icechunk.Session.fork`) and
   the pickled :class:`icechunk.ForkSession` stored in the run's state (``icechunk.fork``), with
   ``icechunk.json`` (branch, base and staging snapshot ids, committed length).
2. **Tasks** (:func:`write_task`): each task unpickles the run's fork, writes its chunks through
   it and stores the fork's change set (pickled, a few hundred bytes) at ``forks/<task_id>.pickle``,
   before its done marker. A duplicate delivery overwrites it with an equivalent change set.
3. **Commit** (:func:`commit_run`): the forks of the done tasks are merged into a session on the
   run branch (:meth:`icechunk.Session.merge`), which *amends* the staging commit (one snapshot,
   parent = the base, message and metadata naming the run); ``main`` is then moved to it only if it
   is still at the base (``reset_branch(..., from_snapshot_id=base)``): a writer that committed
   meanwhile makes the commit refuse with one line (never a silent overwrite). The snapshot is
   tagged with the run id and the run branch deleted. Every step is idempotent, so a commit that
   died half-way is finished by committing again.

A failed or partial run never touches ``main``. No credentials are ever persisted: S3 storage is
opened with credentials from the environment (``from_env``), and only that choice is pickled.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import fs
from .errors import CubelessError, PlanError, TaskError

if TYPE_CHECKING:
    import icechunk
    import zarr

    from .state import RunState

BRANCH = "main"
RUN_BRANCH_PREFIX = "run."
META_NAME = "icechunk.json"
FORK_NAME = "icechunk.fork"
FORKS_DIR = "forks"
#: The object every Icechunk (spec v2) repository has at its root.
REPO_OBJECT = "repo"
COMMITTED_NAME = "icechunk.committed.json"
#: Forks are unpickled and merged in batches of this many (bounded memory for 100,000-task runs).
MERGE_BATCH = 2000


def _ic() -> Any:
    import icechunk

    icechunk.set_logs_filter("error")  # icechunk warns on every local repo open (not for concurrent commits)
    return icechunk


# -- the repository ---------------------------------------------------------------------------------
def storage(store: str) -> "icechunk.Storage":
    """Icechunk storage of a location: local directory, or ``s3://bucket/prefix`` (credentials from the
    environment; ``AWS_ENDPOINT_URL`` for an S3-compatible endpoint such as moto)."""
    import os

    ic = _ic()
    store = fs.normalize(store)
    if not fs.is_remote(store):
        return ic.local_filesystem_storage(fs.local_path(store))
    if not store.startswith("s3://"):
        raise PlanError(f"store {store}: the icechunk format supports local paths and s3:// URLs; use one of them")
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return ic.s3_storage(
        bucket=bucket,
        prefix=prefix or None,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        endpoint_url=endpoint,
        allow_http=bool(endpoint and endpoint.startswith("http://")),
        force_path_style=bool(endpoint),
        from_env=True,
    )


def is_repo(store: str) -> bool:
    """Whether ``store`` holds an Icechunk repository (its ``repo`` object, read through fsspec like
    every other state object, so a missing or unreachable store fails as it does for the Zarr format)."""
    store = fs.normalize(store)
    if not fs.is_remote(store):
        import os

        return os.path.isfile(os.path.join(fs.local_path(store), REPO_OBJECT))
    return fs.exists(fs.join(store, REPO_OBJECT))


def open_repo(store: str) -> "icechunk.Repository":
    ic = _ic()
    try:
        return ic.Repository.open(storage(store))
    except ic.IcechunkError as exc:
        raise CubelessError(f"store {store} is not a readable Icechunk repository ({str(exc).splitlines()[0]})") from None


def resolve(repo: "icechunk.Repository", version: str) -> str:
    """Snapshot id of a tag or a snapshot id; PlanError naming the fix when it is neither."""
    ic = _ic()
    try:
        return str(repo.lookup_tag(version))
    except ic.IcechunkError:
        pass
    try:
        return str(repo.lookup_snapshot(version).id)
    except (ic.IcechunkError, ValueError):
        raise PlanError(
            f"{version!r} is neither a tag nor a snapshot id of this cube; see `cubeless history STORE`"
        ) from None


def read_session(store: str, version: str | None = None) -> "icechunk.Session":
    """A read-only session on main's tip, or at ``version`` (a tag or a snapshot id)."""
    repo = open_repo(store)
    if version is None:
        return repo.readonly_session(branch=BRANCH)
    return repo.readonly_session(snapshot_id=resolve(repo, version))


def read_group(store: str, version: str | None = None) -> "zarr.Group":
    """The cube's root group as committed on main (or at ``version``)."""
    import zarr

    return zarr.open_group(read_session(store, version).store, mode="r", zarr_format=3)


def try_group(store: str) -> "zarr.Group | None":
    """The root group on main, None for a repository whose cube creation never committed."""
    from zarr.errors import GroupNotFoundError

    try:
        return read_group(store)
    except (GroupNotFoundError, FileNotFoundError):
        return None


def create_cube(store: str, build: Callable[["zarr.Group"], None], attributes: dict[str, Any], name: str) -> str:
    """Create the repository (if absent) and commit the empty cube built by ``build``; return the snapshot."""
    import zarr

    ic = _ic()
    st = storage(store)
    repo = ic.Repository.open(st) if ic.Repository.exists(st) else ic.Repository.create(st, check_clean_root=False)
    session = repo.writable_session(BRANCH)
    group = zarr.create_group(session.store, zarr_format=3, overwrite=False, attributes=attributes)
    build(group)
    return str(session.commit(f"cubeless: create cube {name}", metadata={"cubeless": {"op": "create"}}))


# -- a run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunMeta:
    """What a run's Icechunk state records (``icechunk.json``)."""

    branch: str
    base: str  #: main's tip when the run was planned: main must still be there at commit
    staged: str  #: the staging commit (grown time axis) the tasks' fork was made from
    committed_length: int  #: time steps committed before the run
    length: int  #: time steps after the run

    @classmethod
    def read(cls, state: "RunState") -> "RunMeta":
        return cls(**json.loads(fs.get_bytes(fs.join(state.root, META_NAME))))


def run_branch(run_id: str) -> str:
    return RUN_BRANCH_PREFIX + run_id


def fork_uri(state: "RunState", task_id: str) -> str:
    return fs.join(state.root, FORKS_DIR, task_id + ".pickle")


def stage_run(state: "RunState", length: int, grow: Callable[["zarr.Group", int], None]) -> RunMeta:
    """Make the run's branch and staging commit (time axis grown to ``length`` by ``grow``), persist the
    tasks' fork. Idempotent: a run already staged is returned as it is."""
    import zarr

    meta_uri = fs.join(state.root, META_NAME)
    try:
        return RunMeta.read(state)
    except FileNotFoundError:
        pass
    repo = open_repo(state.store)
    branch = run_branch(state.run_id)
    base = str(repo.lookup_branch(BRANCH))
    if branch in repo.list_branches():  # an earlier staging died before its record: start it again
        repo.delete_branch(branch)
    committed = int(zarr.open_group(repo.readonly_session(snapshot_id=base).store, mode="r")["time"].shape[0])
    repo.create_branch(branch, base)
    session = repo.writable_session(branch)
    grow(zarr.open_group(session.store, mode="r+", zarr_format=3), length)
    staged = str(session.commit(f"cubeless: stage run {state.run_id} (not on main until its commit)"))
    fork = repo.writable_session(branch).fork()
    fs.put_bytes(fs.join(state.root, FORK_NAME), pickle.dumps(fork))
    meta = RunMeta(branch=branch, base=base, staged=staged, committed_length=committed, length=length)
    fs.put_bytes(meta_uri, json.dumps(meta.__dict__).encode())
    return meta


def task_fork(state: "RunState") -> tuple["icechunk.ForkSession", RunMeta]:
    """A fresh copy of the run's fork for one task (TaskError when the run was never staged)."""
    try:
        meta = RunMeta.read(state)
        blob = fs.get_bytes(fs.join(state.root, FORK_NAME))
    except FileNotFoundError:
        raise TaskError(f"run {state.run_id} has no Icechunk session in {state.root}; plan the run again") from None
    return pickle.loads(blob), meta


def save_fork(state: "RunState", task_id: str, fork: "icechunk.ForkSession") -> int:
    """Store a task's change set (its done marker's companion); return its size in bytes."""
    blob = pickle.dumps(fork)
    fs.put_bytes(fork_uri(state, task_id), blob)
    return len(blob)


def _merge_forks(session: "icechunk.Session", state: "RunState", task_ids: list[str]) -> int:
    """Merge the stored forks of ``task_ids`` into ``session``; return the bytes read."""
    total = 0
    for i in range(0, len(task_ids), MERGE_BATCH):
        uris = [fork_uri(state, t) for t in task_ids[i : i + MERGE_BATCH]]
        got = fs.get_many(uris)
        absent = [u for u in uris if u not in got]
        if absent:
            raise CubelessError(
                f"run {state.run_id}: {len(absent)} done task(s) have no stored Icechunk change set "
                f"(e.g. {absent[0]}); delete their done markers and resume the run"
            )
        total += sum(len(b) for b in got.values())
        session.merge(*(pickle.loads(got[u]) for u in uris))
    return total


def commit_run(
    state: "RunState", task_ids: Iterable[str], *, message: str, metadata: dict[str, Any]
) -> tuple[str, dict[str, float]]:
    """Merge the run's forks, commit once, move main, tag the run; return (snapshot id, figures).

    Idempotent. Raises :class:`CubelessError` (one line, the fix) when main moved since the run was
    planned (another writer, or a rollback): nothing is overwritten.
    """
    import time

    t0 = time.perf_counter()
    meta = RunMeta.read(state)
    repo = open_repo(state.store)
    figures: dict[str, float] = {}
    done_uri = fs.join(state.root, COMMITTED_NAME)
    try:  # finished before
        return str(json.loads(fs.get_bytes(done_uri))["snapshot"]), figures
    except FileNotFoundError:
        pass
    tip = str(repo.lookup_branch(meta.branch)) if meta.branch in repo.list_branches() else None
    if tip is None:
        raise CubelessError(f"run {state.run_id}: its Icechunk branch {meta.branch} is gone; plan the run again")
    if tip == meta.staged:
        session = repo.writable_session(meta.branch)
        ids = sorted(task_ids)
        figures["icechunk_fork_bytes"] = float(_merge_forks(session, state, ids))
        figures["icechunk_merge_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        tip = str(session.amend(message, metadata={"cubeless": metadata}, allow_empty=True))
        figures["icechunk_commit_seconds"] = time.perf_counter() - t1
    main = str(repo.lookup_branch(BRANCH))
    if main != tip:
        if main != meta.base:
            raise CubelessError(
                f"run {state.run_id} cannot commit: main of {state.store} moved from {meta.base} to {main} while the run "
                f"was running (another writer or a rollback); nothing was overwritten, run the spec again to plan anew"
            )
        ic = _ic()
        try:
            repo.reset_branch(BRANCH, tip, from_snapshot_id=meta.base)
        except ic.ConflictError:
            raise CubelessError(
                f"run {state.run_id} cannot commit: main of {state.store} moved while committing; run the spec again"
            ) from None
    tag = _tag_for(repo, state.run_id, tip)
    fs.put_bytes(done_uri, json.dumps({"snapshot": tip, "tag": tag}).encode())
    repo.delete_branch(meta.branch)
    return tip, figures


def _tag_for(repo: "icechunk.Repository", run_id: str, snapshot: str) -> str:
    """Tag ``snapshot`` with the run id (``<run_id>.2``, ... when a rolled-back run of the same bins was
    tagged before); return the tag."""
    tags = set(repo.list_tags())
    for k in range(1, 10_000):
        tag = run_id if k == 1 else f"{run_id}.{k}"
        if tag not in tags:
            repo.create_tag(tag, snapshot)
            return tag
        if str(repo.lookup_tag(tag)) == snapshot:
            return tag
    raise CubelessError(f"run {run_id} has been tagged 10,000 times; delete old tags")


# -- history ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    id: str
    written_at: datetime
    message: str
    run_id: str | None
    bins: list[str]
    tags: list[str]


def history(store: str, *, limit: int | None = None) -> list[Snapshot]:
    """Main's snapshots, newest first, with the run and bins each commit added."""
    repo = open_repo(store)
    tags: dict[str, list[str]] = {}
    for tag in sorted(repo.list_tags()):
        tags.setdefault(str(repo.lookup_tag(tag)), []).append(tag)
    out: list[Snapshot] = []
    for info in repo.ancestry(branch=BRANCH):
        doc = (info.metadata or {}).get("cubeless") or {}
        out.append(Snapshot(
            id=str(info.id), written_at=info.written_at, message=info.message, run_id=doc.get("run_id"),
            bins=list(doc.get("bins") or []), tags=tags.get(str(info.id), []),
        ))
        if limit is not None and len(out) >= limit:
            break
    return out


def tip(store: str) -> str:
    """Snapshot id of main's tip."""
    return str(open_repo(store).lookup_branch(BRANCH))


@dataclass(frozen=True)
class Rollback:
    old: str  #: main's tip before
    new: str  #: main's tip after
    dropped: list[Snapshot]  #: snapshots no longer on main (newest first), still reachable by their tags
    run_id: str | None  #: the run whose snapshot main is at now (None: the empty cube)


def rollback(store: str, to: str) -> Rollback:
    """Move main back to ``to`` (a tag or a snapshot id of main's history).

    The move is recorded in the repository's operations log (``Repository.ops_log``); the dropped
    snapshots stay readable through their tags. The caller holds the cube's lock.
    """
    repo = open_repo(store)
    target = resolve(repo, to)
    old = str(repo.lookup_branch(BRANCH))
    snaps = history(store)
    ids = [s.id for s in snaps]
    if target not in ids:
        raise PlanError(f"{to!r} is not in the history of main (a later or unrelated snapshot); see `cubeless history STORE`")
    if ids.index(target) == len(ids) - 1:
        raise PlanError(f"{to!r} is the repository's initial snapshot, before the cube existed; roll back to a later one")
    dropped = snaps[: ids.index(target)]
    if dropped:
        repo.reset_branch(BRANCH, target, from_snapshot_id=old)
    return Rollback(old=old, new=target, dropped=dropped, run_id=snaps[ids.index(target)].run_id)


def operations(store: str, *, limit: int = 50) -> list[str]:
    """The repository's operations log (commits, branch moves, tags), newest first, one line each."""
    out = []
    for update in open_repo(store).ops_log():
        out.append(f"{update.updated_at:%Y-%m-%d %H:%M:%S} {update.kind!r}")
        if len(out) >= limit:
            break
    return out


def rollback_cube(store: str, to: str) -> Rollback:
    """:func:`rollback` under the cube's lock, then make the run state agree with main again.

    The store's manifest becomes the manifest of the run main is now at (removed when main is at the
    empty cube), and the state of every dropped run is deleted, so running the spec again plans those
    bins afresh (one new snapshot, tagged ``<run_id>.2``).
    """
    from .commit import manifest_uri
    from .state import CubeLock, RunState

    store = fs.normalize(store)
    if not is_repo(store):
        raise PlanError(f"store {store} is not an Icechunk cube; only format icechunk keeps versions to roll back to")
    with CubeLock(store) as lock:
        lock.acquire("rollback")
        result = rollback(store, to)
        for snap in result.dropped:
            if snap.run_id:
                fsys, path = fs.filesystem(RunState(store, snap.run_id).root)
                try:
                    fsys.rm(path, recursive=True)
                except FileNotFoundError:
                    pass
        if result.run_id:
            try:
                fs.put_bytes(manifest_uri(store), fs.get_bytes(RunState(store, result.run_id).manifest_uri))
            except FileNotFoundError:
                fs.delete(manifest_uri(store))
        else:
            fs.delete(manifest_uri(store))
    return result
