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
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from zarr.abc.store import Store


def is_remote(url: str) -> bool:
    """True for an object-store URL (``s3://...``, ``memory://...``), false for a local path."""
    return "://" in url and not url.startswith("file://")


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
