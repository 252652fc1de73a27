"""Small fsspec helpers: one way to name, read, write and list objects on local disk and S3.

Every location is a plain string: a local path (``./cube.zarr``, ``/data/cube.zarr``,
``file:///data/cube.zarr``) or an object store URL (``s3://bucket/prefix``). S3 goes through
s3fs (credentials and ``AWS_ENDPOINT_URL`` from the environment, as botocore resolves them);
nothing here imports boto3.

Writes are whole-object and atomic: on S3 a single PUT, on local disk a temporary file renamed
over the target, so a concurrent reader sees the old object or the new one, never a torn one.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from zarr.abc.store import Store


def is_remote(url: str) -> bool:
    """True for a URL read over the network (``s3://...``, ``https://...``, ``memory://...``), false
    for a local path or ``file://`` URL."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() != "file"


def local_path(url: str) -> str:
    """The absolute filesystem path of a local location (``file://`` stripped)."""
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def normalize(url: str) -> str:
    """Canonical form of a location: absolute path for local ones, no trailing slash."""
    if is_remote(url):
        return url.rstrip("/")
    return local_path(url)


def join(url: str, *parts: str) -> str:
    """Join key parts onto a location with ``/`` (also for local paths, which are POSIX here)."""
    out = url.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def filesystem(url: str) -> tuple["AbstractFileSystem", str]:
    """The (synchronous) fsspec filesystem of a location and the path inside it."""
    from fsspec.core import url_to_fs

    if not is_remote(url):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), local_path(url)
    return url_to_fs(url)


def put_bytes(url: str, data: bytes) -> None:
    """Write one object atomically (S3: one PUT; local: temp file then rename)."""
    fs, path = filesystem(url)
    if is_remote(url):
        fs.pipe_file(path, data)
        return
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def get_bytes(url: str) -> bytes:
    """Read one object; raises FileNotFoundError when absent."""
    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def get_many(urls: Iterable[str]) -> dict[str, bytes]:
    """Read many objects (concurrently on S3); missing ones are left out."""
    urls = list(urls)
    if not urls:
        return {}
    if not is_remote(urls[0]):
        out: dict[str, bytes] = {}
        for u in urls:
            try:
                with open(local_path(u), "rb") as f:
                    out[u] = f.read()
            except FileNotFoundError:
                pass
        return out
    fs, _ = filesystem(urls[0])
    paths = {filesystem(u)[1]: u for u in urls}
    got: dict[str, Any] = fs.cat(list(paths), on_error="omit")
    return {paths[p]: bytes(v) for p, v in got.items() if not isinstance(v, BaseException)}


def exists(url: str) -> bool:
    """Whether an object (or, locally, a file or directory) exists, bypassing listing caches."""
    fs, path = filesystem(url)
    if is_remote(url):
        fs.invalidate_cache(path)
    return bool(fs.exists(path))


def delete(url: str) -> None:
    """Delete one object if present."""
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def list_names_by_stems(url: str, stems: Sequence[str], *, concurrency: int = 32) -> list[str]:
    """Names of the objects directly under a prefix that start with one of ``stems`` (which must
    not overlap: each name is listed once).

    On S3 one paginated listing per stem (``Prefix=<prefix>/<stem>``), ``concurrency`` at a time on
    s3fs's event loop: the million done markers of a run are ~1,000 pages, ~1 minute listed one
    after the other, and ~120 stems of ~9 pages each at 32 in flight. Elsewhere one listing,
    filtered. Listing caches are bypassed, as in :func:`list_names`.
    """
    stems = tuple(stems)
    fsys, path = filesystem(url)
    lsdir = getattr(fsys, "_lsdir", None)
    if not is_remote(url) or lsdir is None or getattr(fsys, "loop", None) is None or not stems:
        names = list_names(url)
        return [n for n in names if n.startswith(stems)] if stems else names
    import asyncio

    from fsspec.asyn import sync

    async def listings() -> list[list[dict]]:
        gate = asyncio.Semaphore(concurrency)

        async def one(stem: str) -> list[dict]:
            async with gate:
                try:
                    return list(await lsdir(path, refresh=True, prefix=stem))
                except FileNotFoundError:
                    return []

        return await asyncio.gather(*(one(s) for s in stems))

    prefix = path.rstrip("/") + "/"
    out: list[str] = []
    for entries in sync(fsys.loop, listings):
        for e in entries:
            if e.get("type") == "directory":
                continue
            name = str(e["name"])
            out.append(name[len(prefix) :] if name.startswith(prefix) else name.rsplit("/", 1)[-1])
    return out


def list_names(url: str) -> list[str]:
    """Names of the objects directly under a prefix, from ONE listing (paginated on S3).

    A missing prefix lists as empty. Listing caches are bypassed: markers written moments ago by
    another process are seen.
    """
    if not is_remote(url):
        try:
            return [e.name for e in os.scandir(local_path(url)) if e.is_file()]
        except FileNotFoundError:
            return []
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    prefix = path.rstrip("/") + "/"
    return [e[len(prefix) :] if e.startswith(prefix) else e.rsplit("/", 1)[-1] for e in entries]


def zarr_store(url: str, *, read_only: bool = False) -> "Store":
    """The zarr store of a location: ``LocalStore`` on disk (atomic writes), ``FsspecStore`` on S3."""
    from zarr.storage import FsspecStore, LocalStore

    if not is_remote(url):
        return LocalStore(local_path(url), read_only=read_only)
    return FsspecStore.from_url(url, read_only=read_only)


# -- can the store be used at all? ------------------------------------------------------------------
#: botocore/aiohttp failures that mean "no usable credentials or endpoint", by class name (the
#: compute path never imports boto3; matching names also covers aiobotocore's copies).
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_NO_ENDPOINT = {
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
    "ClientConnectorDNSError", "ServerDisconnectedError", "gaierror",
}


def _names(exc: BaseException) -> set[str]:
    """Class names of an exception and of everything in its cause/context chain."""
    out: set[str] = set()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.update(c.__name__ for c in type(e).__mro__)
        e = e.__cause__ or e.__context__
    return out


def storage_problem(exc: BaseException, url: str | None = None) -> str | None:
    """One line naming what is wrong with an object store location (``url``, when known) and the
    fix, when ``exc`` is a missing-credentials, unreachable-endpoint or access-denied failure of
    botocore/s3fs (None for anything else)."""
    names = _names(exc)
    if not names & ({"BotoCoreError", "ClientError", "ClientConnectionError"} | _NO_CREDENTIALS | _NO_ENDPOINT):
        if not (url and isinstance(exc, PermissionError)):
            return None
    what = f"store {url}: " if url else ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if names & _NO_CREDENTIALS:
        return (f"{what}no AWS credentials found; set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY)" + (", or use a local store path" if url else ""))
    if names & _NO_ENDPOINT:
        where = f"endpoint {endpoint}" if endpoint else "the AWS endpoint"
        return (f"{what}{where} is unreachable ({type(exc).__name__}); check the network and "
                "AWS_ENDPOINT_URL" + (", or use a local store path" if url else ""))
    if "NoRegionError" in names:
        return f"{what}no AWS region configured; set AWS_DEFAULT_REGION (or AWS_REGION), e.g. AWS_DEFAULT_REGION=us-west-2"
    if isinstance(exc, PermissionError) or names & {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return f"{what}access denied ({' '.join(str(exc).split())[:200]}); check the AWS credentials and the bucket policy"
    return None


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_bucket(url: str) -> None:
    """One HEAD of the store's bucket with at most two attempts and a 5 s connect timeout, so no
    credentials, an unreachable or unresolvable endpoint and a missing bucket are reported in a
    second or two instead of after s3fs's and botocore's retries (~25 s). An access denied here is
    let through: credentials limited to a prefix may not HEAD the bucket, yet write the store."""
    from fsspec.core import url_to_fs

    from .errors import UserError

    fsys, path = url_to_fs(url, skip_instance_cache=True,
                           config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5})
    fsys.retries = 1  # s3fs's own retry loop, on top of botocore's
    bucket = path.split("/", 1)[0]
    if not hasattr(fsys, "call_s3"):  # another object store: its first real operation decides
        return
    try:
        fsys.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise UserError(f"store {url}: bucket {bucket!r} does not exist; create it or check the bucket name") from None
    except PermissionError:
        return
    except Exception as exc:  # noqa: BLE001 - translated into one line, or re-raised
        line = storage_problem(exc, url)
        if line is None:
            raise
        raise UserError(line) from None


def check_writable(url: str) -> None:
    """Refuse (:class:`~cubeless.errors.UserError`, one line) a store that cannot be written:
    a local path whose nearest existing folder refuses a new entry (read-only, ``/proc``, a file
    in the way), or an object store without credentials, with an unreachable endpoint or a
    missing bucket. Leaves nothing behind (a local probe folder is removed at once)."""
    from .errors import UserError

    if is_remote(url):
        _check_bucket(url)
        return
    import tempfile

    path = local_path(url)
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        what = "is a file" if base == path else f"lies under {base}, which is a file"
        raise UserError(f"store {url} {what}; give a directory path or an s3:// URL for the cube")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cubeless-write-check-", dir=base))
    except OSError as exc:
        raise UserError(f"store {url} is not writable ({exc.strerror} in {base}); choose a path you can "
                        "write to, or an s3:// URL") from None
