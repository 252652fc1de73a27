"""Which scene asset hrefs a worker may read: an allowlist checked before any byte is read.

Task messages carry STAC items, and STAC items carry hrefs; a worker must not be talked into
reading (and so revealing, or paying for) anything its operator did not intend. Every href is
checked by :meth:`HrefPolicy.check`, which raises :class:`~cubeless.errors.HrefNotAllowed` with a
one-line reason. The module is pure: no I/O, no environment variables (callers build the policy).

Rules:

* a plain local path (``/data/x.tif``, ``./x.tif``) is allowed only if ``allow_local``; paths
  naming GDAL's virtual file systems (``/vsicurl/...``, ``/vsis3/...``, anywhere in the path) and
  GDAL connection strings (``GTIFF_DIR:1:...``) are never allowed, because they would read the
  network (or something else) behind a path that looks local;
* ``file://`` URIs need the ``file`` scheme and an empty (or ``localhost``) host;
* ``http(s)://`` URIs need their scheme and a host in ``hosts``: an exact name (``a.example.com``,
  optionally with ``:port``) or a ``*.suffix`` pattern matching any subdomain of ``suffix`` (not
  ``suffix`` itself); user info (``user@host``) is refused;
* ``s3://bucket/key`` needs the ``s3`` scheme, and, if ``buckets`` is set, a bucket matching one
  of its shell-style patterns (``sentinel-cogs``, ``e84-*``);
* anything else (``zip+https://``, ``HDF5:...``, ``gs://``) is refused unless its scheme is listed
  (and then only its scheme is checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Iterable, Protocol
from urllib.parse import urlsplit

from .errors import HrefNotAllowed

__all__ = ["HrefPolicy", "SENTINEL2_COG_HOSTS"]

#: Where Element 84's Earth Search serves Sentinel-2 L2A COGs over https.
SENTINEL2_COG_HOSTS: tuple[str, ...] = (
    "sentinel-cogs.s3.us-west-2.amazonaws.com",
    "e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com",
)

_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}(:\d{1,5})?$")
_WINDOWS_PATH_RE = re.compile(r"^[A-Za-z]:[\\/]")
_CONNECTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+.-]*:")
_MAX_SHOWN = 100


class HasStacApi(Protocol):
    """A cube spec, as far as the policy cares."""

    @property
    def stac_api(self) -> str: ...


def _shown(href: str) -> str:
    """The href as quoted in an error: one line, bounded length."""
    flat = href.encode("unicode_escape").decode("ascii")
    return repr(flat if len(flat) <= _MAX_SHOWN else flat[: _MAX_SHOWN - 3] + "...")


def _norm_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class HrefPolicy:
    """An allowlist of asset locations. Build it with :meth:`local`, :meth:`from_hosts` or :meth:`for_spec`."""

    #: URI schemes allowed (lower case), e.g. ``{"https", "s3", "file"}``.
    schemes: frozenset[str] = frozenset({"https"})
    #: http(s) hosts: exact names (optionally ``host:port``) or ``*.suffix`` patterns.
    hosts: tuple[str, ...] = ()
    #: s3 bucket patterns (shell style); ``None`` allows any bucket when ``s3`` is an allowed scheme.
    buckets: tuple[str, ...] | None = None
    #: Whether plain local paths (no scheme) may be read.
    allow_local: bool = False
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schemes = frozenset(s.strip().lower() for s in self.schemes)
        hosts = tuple(dict.fromkeys(_norm_host(h) for h in self.hosts))
        for h in hosts:
            if not (_HOST_RE.match(h) or _IPV4_RE.match(h)):
                raise ValueError(f"{h!r} is not a host name or *.suffix pattern; use e.g. data.example.com or *.example.com")
        object.__setattr__(self, "schemes", schemes)
        object.__setattr__(self, "hosts", hosts)
        if self.buckets is not None:
            object.__setattr__(self, "buckets", tuple(dict.fromkeys(b.strip() for b in self.buckets)))
        object.__setattr__(self, "_exact", frozenset(h for h in hosts if not h.startswith("*.")))
        object.__setattr__(self, "_suffixes", tuple(h[1:] for h in hosts if h.startswith("*.")))

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_hosts(
        cls,
        hosts: Iterable[str],
        *,
        schemes: Iterable[str] = ("https",),
        buckets: Iterable[str] | None = None,
        allow_local: bool = False,
    ) -> "HrefPolicy":
        """Only these http(s) hosts (plus whatever else the keyword options allow)."""
        return cls(
            schemes=frozenset(schemes),
            hosts=tuple(hosts),
            buckets=None if buckets is None else tuple(buckets),
            allow_local=allow_local,
        )

    @classmethod
    def local(cls, *hosts: "str | HasStacApi", buckets: Iterable[str] | None = None) -> "HrefPolicy":
        """For a run on one machine: local paths, ``file://``, ``s3://`` (any bucket unless
        ``buckets`` is given) and ``https://`` on the given hosts.

        A spec (anything with a ``stac_api``) among ``hosts`` stands for its :meth:`for_spec`
        hosts, so ``HrefPolicy.local(spec)`` is the default policy of a local run.
        """
        names: list[str] = []
        schemes = {"file", "s3", "https"}
        for h in hosts:
            if isinstance(h, str):
                names.append(h)
            else:
                p = cls.for_stac_api(str(h.stac_api))
                names.extend(p.hosts)
                schemes |= p.schemes
        return cls(
            schemes=frozenset(schemes),
            hosts=tuple(names),
            buckets=None if buckets is None else tuple(buckets),
            allow_local=True,
        )

    @classmethod
    def for_stac_api(cls, stac_api: str, *extra_hosts: str) -> "HrefPolicy":
        """The default of a local run: :meth:`local` with the STAC API's host and the usual
        Sentinel-2 COG hosts (:data:`SENTINEL2_COG_HOSTS`). An ``http://`` API (a local test
        server) also allows plain ``http`` for the listed hosts."""
        api = urlsplit(stac_api)
        api_host = api.netloc.rsplit("@", 1)[-1]
        hosts = ([api_host] if api_host else []) + list(SENTINEL2_COG_HOSTS) + list(extra_hosts)
        policy = cls.local(*hosts)
        if api.scheme.lower() == "http":
            policy = replace(policy, schemes=policy.schemes | {"http"})
        return policy

    @classmethod
    def for_spec(cls, spec: "HasStacApi", *extra_hosts: str) -> "HrefPolicy":
        """:meth:`for_stac_api` for a :class:`~cubeless.spec.CubeSpec` (anything with ``stac_api``)."""
        return cls.for_stac_api(str(spec.stac_api), *extra_hosts)

    # -- checks ----------------------------------------------------------------------------------
    def reason(self, href: object) -> str | None:
        """Why ``href`` is refused, or ``None`` if it is allowed."""
        if not isinstance(href, str) or not href.strip():
            return "it is empty or not a string"
        if href != href.strip() or any(ord(c) < 32 or c == "\x7f" for c in href):
            return "it contains whitespace at the ends or control characters"
        if _WINDOWS_PATH_RE.match(href):
            return self._local_reason(href)
        parts = urlsplit(href)
        scheme = parts.scheme.lower()
        if not scheme:
            return self._local_reason(href)
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes)) or "none"
            return f"scheme {scheme!r} is not allowed (allowed: {allowed})"
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                return f"file URI names host {parts.netloc!r}; only local files (file:///path) are allowed"
            if _is_vsi(parts.path):
                return "it names a GDAL virtual file system path (/vsi...)"
            return None
        if scheme in ("http", "https"):
            return self._host_reason(parts.netloc)
        if scheme == "s3":
            return self._bucket_reason(parts.netloc)
        return None

    def allows(self, href: object) -> bool:
        """True when :meth:`check` would pass."""
        return self.reason(href) is None

    def check(self, href: object) -> None:
        """Raise :class:`~cubeless.errors.HrefNotAllowed` unless ``href`` may be read."""
        why = self.reason(href)
        if why is not None:
            shown = _shown(href) if isinstance(href, str) else repr(type(href).__name__)
            raise HrefNotAllowed(f"asset href {shown} is not allowed: {why}")

    def check_all(self, hrefs: Iterable[object]) -> None:
        """:meth:`check` each href; the first refused one raises."""
        for h in hrefs:
            self.check(h)

    # -- helpers ---------------------------------------------------------------------------------
    def _local_reason(self, href: str) -> str | None:
        if _is_vsi(href):
            return "it names a GDAL virtual file system path (/vsi...)"
        if _CONNECTION_RE.match(href) and not _WINDOWS_PATH_RE.match(href):
            return "it looks like a GDAL connection string (NAME:...), not a file path"
        if not self.allow_local:
            return "local file paths are not allowed by this policy"
        return None

    def _host_reason(self, netloc: str) -> str | None:
        if "@" in netloc:
            return "URLs with user info (user@host) are not allowed"
        host = _norm_host(netloc)
        if not host:
            return "the URL has no host"
        bare = host.rsplit(":", 1)[0] if re.search(r":\d+$", host) else host
        if host in self._exact or bare in self._exact:
            return None
        if any(bare.endswith(suffix) and len(bare) > len(suffix) for suffix in self._suffixes):
            return None
        allowed = ", ".join(self.hosts) if self.hosts else "none"
        if len(allowed) > 160:
            allowed = allowed[:157] + "..."
        return f"host {bare!r} is not in the allowlist (allowed: {allowed})"

    def _bucket_reason(self, bucket: str) -> str | None:
        if not bucket:
            return "the s3 URI has no bucket"
        if self.buckets is None:
            return None
        if any(fnmatchcase(bucket, pattern) for pattern in self.buckets):
            return None
        allowed = ", ".join(self.buckets) if self.buckets else "none"
        return f"s3 bucket {bucket!r} is not in the allowlist (allowed: {allowed})"


def _is_vsi(path: str) -> bool:
    """GDAL treats /vsi<name>/ paths as virtual file systems (network, archives); refuse the
    segment anywhere, since connection strings and archives can nest it."""
    return "/vsi" in path.replace("\\", "/").lower()
