"""The one catalog search of a run: every item of the collection over the region and date range.

Uses pystac-client with a ``urllib3.Retry`` mounted on its session: 429 and 5xx answers and
connection/read errors are retried with exponential backoff plus jitter, for GET and POST alike,
and a ``Retry-After`` header (seconds or HTTP date) is honoured on every retried status (capped at
:attr:`SearchOptions.retry_after_max`). Every request has a (connect, read) timeout.

``max_cloud_cover`` is sent as the STAC ``query`` extension
(``{"eo:cloud_cover": {"lte": ...}}``) only when the API declares that conformance class; it is
always applied client-side too, because some servers accept but ignore it (rustac's in-memory
backend declares no query conformance and answers a ``query`` search with no items at all).
Items without ``eo:cloud_cover`` are kept (the SCL mask still removes their clouds).

**Made for Earth Search** (API Gateway + Lambda, 6 MB per answer, ~17.6 KB per full item):

* the STAC ``fields`` extension, when the API declares it, asks only for what planning and loading
  read (:func:`fields_for`); about 5x fewer bytes per item;
* the page size follows the bytes per item seen so far (:attr:`SearchOptions.page_bytes` per page,
  capped at :attr:`SearchOptions.limit`); a 502/413/504 answer halves it and the same page is asked
  again from the same token, so the walk never restarts;
* a search that matches more than :attr:`SearchOptions.partition_pages` pages is split by time bin
  (and by longitude strips when there are fewer bins than :attr:`SearchOptions.concurrency`); the
  partitions run on that many threads (so as many requests in flight), each with its own retries;
  items are de-duplicated by id;
* every page is reduced to minimal items (``reduce``, by default :func:`cubeless.plan.minimal_item`
  with the spec's bands and mask band) before the next one is fetched: the raw items are never held.

Progress (pages, items, items/s, partitions done) goes to the log and to :class:`SearchStats`.

An unreachable API, an answer that is not a STAC API, a missing collection or a rejected search
raise :class:`~cubeless.errors.PlanError` with one line naming the URL and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from sys import intern
from datetime import datetime as _datetime
from datetime import timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry
from urllib3.util.retry import Retry

from .errors import PlanError
from .spec import CubeSpec
from .timebins import bins_datetime, time_bins  # noqa: F401  (search.bins_datetime)

if TYPE_CHECKING:
    from pystac_client import Client

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: throttling and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Statuses that mean "this page is too big" behind API Gateway + Lambda: halve the page instead.
TOO_BIG_STATUSES = frozenset({413, 502, 504})
#: The STAC API conformance class of the ``query`` extension.
QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0/item-search#query"
#: An AOI with more vertices than this is sent as a (slightly buffered, simplified) convex hull;
#: tiles are still filtered by the exact AOI, so only a few extra items are fetched.
MAX_AOI_VERTICES = 500

#: ``progress(items_so_far)``, called after each page.
Progress = Callable[[int], None]


class _Retry(Retry):
    """urllib3 ``Retry`` that honours ``Retry-After`` on every status it retries, not just 413/429/503."""

    RETRY_AFTER_STATUS_CODES = RETRY_STATUSES | Retry.RETRY_AFTER_STATUS_CODES

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # noqa: ANN001, ANN206
        # A host that does not exist (EAI_NONAME: "Name or service not known") stays so: fail at
        # once instead of after ~35 s of retries. "Temporary failure in name resolution" is retried.
        from urllib3.exceptions import MaxRetryError, NameResolutionError

        if isinstance(error, NameResolutionError) and "Temporary failure" not in str(error):
            raise MaxRetryError(_pool, url, error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


@dataclass(frozen=True)
class SearchOptions:
    """How the catalog is queried: retries, timeouts and page size."""

    retries: int = 6  #: retries per request (connection, read and status errors each)
    backoff: float = 0.5  #: seconds; the n-th retry waits ``backoff * 2**(n-1)``
    backoff_max: float = 30.0  #: cap of one backoff wait (seconds)
    jitter: float = 0.5  #: up to this many random seconds added to each backoff wait
    retry_after_max: int = 120  #: cap of an honoured ``Retry-After`` (seconds)
    connect_timeout: float = 10.0  #: seconds to open a connection
    read_timeout: float = 60.0  #: seconds to wait for an answer (one page)
    limit: int = 1000  #: most items per page
    page_bytes: int = 2_000_000  #: aimed bytes per page (Earth Search answers 502 above 6 MB)
    item_bytes: int = 20_000  #: expected bytes per full item before the first page is seen
    fields_item_bytes: int = 6_000  #: the same with the ``fields`` extension
    concurrency: int = 8  #: partitions searched at once (= requests in flight)
    partition_pages: int = 4  #: a search of more pages than this is partitioned
    use_fields: bool = True  #: use the ``fields`` extension when the API declares it

    def retry(self, statuses: frozenset[int] = RETRY_STATUSES) -> Retry:
        """The ``urllib3.Retry`` mounted on the client's session."""
        return _Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=0,
            allowed_methods=frozenset({"GET", "POST", "HEAD", "OPTIONS"}),
            status_forcelist=statuses,
            backoff_factor=self.backoff,
            backoff_max=self.backoff_max,
            backoff_jitter=self.jitter,
            respect_retry_after_header=True,
            retry_after_max=self.retry_after_max,
            raise_on_status=False,  # hand back the last answer: its status goes in the error line
        )


def _reason(err: Exception) -> str:
    """A short cause for an error line: the HTTP status or the root network error."""
    status = getattr(err, "status_code", None)
    if status:
        return f"HTTP {status}"
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Temporary failure",
                   "No route to host", "Connection reset", "Max retries exceeded"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:120] if text else err.__class__.__name__


def _after(err: Exception, retries: int) -> str:
    """" after N retries", except for a host that does not exist (not retried: see _Retry)."""
    return "" if "Name or service not known" in str(err) else f" after {retries} retries"


def _server_message(err: Exception) -> str:
    text = str(err).strip().replace("\n", " ")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            text = str(doc.get("description") or doc.get("detail") or doc.get("message") or doc.get("code") or text)
    except ValueError:
        pass
    return text[:160]


def open_client(url: str, options: SearchOptions = SearchOptions()) -> "Client":
    """Open the STAC API at ``url`` with retries and timeouts, or raise a one-line PlanError."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    io = StacApiIO(max_retries=options.retry(), timeout=(options.connect_timeout, options.read_timeout))
    try:
        return Client.open(url, stac_io=io)
    except APIError as err:
        status = getattr(err, "status_code", None)
        if status:
            raise PlanError(
                f"STAC API {url} answered {_reason(err)}; check `stac_api` is the API root "
                "(e.g. https://earth-search.aws.element84.com/v1)"
            ) from None
        raise PlanError(
            f"STAC API {url} is unreachable ({_reason(err)}{_after(err, options.retries)}); "
            "check `stac_api` in the spec and your network"
        ) from None
    except Exception as err:  # JSON or STAC parse errors: the URL is not a STAC API root
        raise PlanError(
            f"{url} is not a STAC API ({err.__class__.__name__}); set `stac_api` to the API root "
            "(e.g. https://earth-search.aws.element84.com/v1)"
        ) from None


def check_collection(client: "Client", url: str, collection: str) -> None:
    """Raise a one-line PlanError when ``collection`` does not exist (when the API lists collections)."""
    from pystac_client.exceptions import APIError

    if not client.conforms_to("COLLECTIONS"):
        return
    try:
        found = client.get_collection(collection)  # None on 404
    except APIError as err:
        raise PlanError(
            f"STAC API {url} failed to describe collection {collection!r} ({_reason(err)}); retry later"
        ) from None
    if found is not None:
        return
    try:
        ids = sorted(c.id for c in client.get_collections())
    except Exception:  # noqa: BLE001 - best effort: the list only improves the message
        ids = []
    shown = ", ".join(ids[:12]) + (", ..." if len(ids) > 12 else "")
    raise PlanError(f"collection {collection!r} not found at {url} (available: [{shown}]); fix `collection`")


def _search_geometry(spec: CubeSpec, region: BaseGeometry | None) -> dict[str, Any]:
    """``bbox`` for a bbox spec, else ``intersects`` with the AOI (hull of a very detailed AOI)."""
    if region is None:
        if spec.bbox is not None:
            return {"bbox": list(spec.bbox)}
        from .grid import spec_region

        region = spec_region(spec)
    if spec.bbox is not None and region.equals(box(*spec.bbox)):
        return {"bbox": list(spec.bbox)}
    import shapely

    geom = region
    if shapely.get_num_coordinates(geom) > MAX_AOI_VERTICES:
        tol = 0.01
        geom = geom.convex_hull.buffer(tol).simplify(tol)  # a superset: simplify moves by <= tol
    return {"intersects": mapping(geom)}


def _decode(body: bytes) -> Any:
    """A search page's JSON (msgspec: a few times faster than ``json``, which took an eighth of the
    search's client CPU); raises ValueError when it is not JSON."""
    import msgspec

    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as err:
        raise ValueError(str(err)) from None


def cloud_ok(item: dict[str, Any], max_cloud_cover: float | None) -> bool:
    """True if the item passes ``max_cloud_cover`` (items without ``eo:cloud_cover`` pass)."""
    if max_cloud_cover is None:
        return True
    cc = (item.get("properties") or {}).get("eo:cloud_cover")
    return cc is None or float(cc) <= max_cloud_cover


@dataclass
class SearchStats:
    """What a search did (filled while it runs; read it for progress and the bench)."""

    pages: int = 0
    items: int = 0  #: items received (before de-duplication and the cloud filter)
    kept: int = 0  #: unique items kept
    bytes: int = 0  #: response bytes received
    halvings: int = 0  #: pages asked again at half the size after a 502/413/504
    partitions: int = 1
    partitions_done: int = 0
    fields: bool = False  #: whether the ``fields`` extension was used
    matched: int | None = None  #: numberMatched of the whole search, when the API says
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_item(self) -> float:
        return self.bytes / self.items if self.items else 0.0

    def line(self) -> str:
        """One progress line (as logged)."""
        return (f"{self.pages} pages, {self.items:,} items ({self.kept:,} kept), {self.items_per_s:,.0f} items/s, "
                f"{self.bytes_per_item / 1024:.1f} KiB/item, partitions {self.partitions_done}/{self.partitions}"
                + (f", {self.halvings} pages halved" if self.halvings else ""))


#: Item properties the planner and the loader read (asked for with the ``fields`` extension).
FIELDS_PROPERTIES = (
    "datetime", "start_datetime", "end_datetime", "platform", "constellation", "gsd", "eo:cloud_cover",
    "eo:bands", "raster:bands", "s2:processing_baseline", "earthsearch:boa_offset_applied",
    "proj:epsg", "proj:code", "proj:wkt2", "proj:projjson", "proj:shape", "proj:transform", "proj:bbox",
    "grid:code",
)


class Sharer:
    """Makes repeated parts of items one object: equal small lists/dicts (``proj:shape``,
    ``raster:bands``, extension lists, ...) and short strings (media types, platform) are shared.

    About half the Python memory of minimal items (a 145,000-item search: ~10 KB -> ~5 KB each).
    Items are read-only after this (their parts may be shared). Thread-safe (dict ``setdefault``).
    A value's key is its msgspec JSON with sorted keys (C; ``json.dumps(sort_keys=True)`` took a
    fifth of a Brazil-year search's client CPU).
    """

    SHARED_KEYS = frozenset({"stac_extensions", "proj:shape", "proj:transform", "raster:bands", "eo:bands", "bands",
                             "roles", "type", "platform", "constellation", "proj:epsg", "proj:code",
                             "s2:processing_baseline", "collection", "stac_version", "gsd", "nodata", "data_type"})

    def __init__(self) -> None:
        import msgspec

        self._cache: dict[Any, Any] = {}
        self._encode = msgspec.json.Encoder(order="sorted").encode

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return self._walk(item)

    def _one(self, value: Any) -> Any:
        try:
            key = (type(value).__name__, self._encode(value))
        except (TypeError, ValueError):
            return value
        return self._cache.setdefault(key, value)

    def _walk(self, d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            k = intern(k)
            if k in self.SHARED_KEYS:
                v = self._one(v)
            elif isinstance(v, dict) and k != "geometry":
                v = self._walk(v)
            out[k] = v
        return out


def fields_for(assets: list[str]) -> dict[str, list[str]]:
    """The ``fields`` include list of a search: ids, footprint, the used assets, the read properties."""
    return {"include": ["id", "type", "collection", "stac_version", "stac_extensions", "geometry", "bbox",
                        *(f"properties.{p}" for p in FIELDS_PROPERTIES), *(f"assets.{a}" for a in assets)]}


def _interval(datetime: str) -> tuple[_datetime, _datetime] | None:
    a, sep, b = datetime.partition("/")
    if not sep or ".." in (a, b):
        return None
    try:
        lo = _datetime.fromisoformat(a.replace("Z", "+00:00"))
        hi = _datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (lo if lo.tzinfo else lo.replace(tzinfo=timezone.utc)), (hi if hi.tzinfo else hi.replace(tzinfo=timezone.utc))


def _iso(d: _datetime) -> str:
    return d.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def partitions(spec: CubeSpec, datetime: str, where: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
    """Search bodies (``datetime`` + ``bbox``/``intersects``) that together cover one search.

    One per time bin inside ``datetime`` (clipped to it); a bbox is also cut into longitude strips
    when there are fewer bins than ``concurrency``. Items on a cut are found twice (de-duplicated).
    """
    span = _interval(datetime)
    times = [datetime]
    if span is not None:
        lo, hi = span
        bins = time_bins(lo.date(), hi.date(), spec.interval)
        times = []
        for b in bins:
            a = max(lo, _datetime(b.start.year, b.start.month, b.start.day, tzinfo=timezone.utc))
            z = min(hi, _datetime(b.end.year, b.end.month, b.end.day, tzinfo=timezone.utc) - timedelta(milliseconds=1))
            if a <= z:
                times.append(f"{_iso(a)}/{_iso(z)}")
        times = times or [datetime]
    wheres = [where]
    if "bbox" in where and len(times) < concurrency:
        w, so, e, n = where["bbox"][:4]
        k = math.ceil(concurrency / len(times))
        step = (e - w) / k
        wheres = [{"bbox": [w + i * step, so, (w + (i + 1) * step) if i < k - 1 else e, n]} for i in range(k)]
    return [{"datetime": t, **wh} for t in times for wh in wheres]


class _Walker:
    """Walks the pages of one search body (POST, ``next`` tokens), halving pages that are too big."""

    def __init__(self, url: str, search_url: str, options: SearchOptions, stats: SearchStats,
                 keep: Callable[[list[dict[str, Any]]], bool], expected: int) -> None:
        self.url, self.search_url, self.options, self.stats = url, search_url, options, stats
        self.keep = keep  # called with each page's features; False stops the walk
        self.expected = expected
        self._local = threading.local()
        self.stop = threading.Event()

    def _session(self) -> Any:
        s = getattr(self._local, "session", None)
        if s is None:
            import requests
            from requests.adapters import HTTPAdapter

            s = requests.Session()
            adapter = HTTPAdapter(max_retries=self.options.retry(RETRY_STATUSES - TOO_BIG_STATUSES))
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def _limit(self, per_item: float) -> int:
        return max(1, min(self.options.limit, int(self.options.page_bytes / max(per_item, 1.0))))

    def walk(self, body: dict[str, Any], first: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Every page of ``body``; ``first`` is called with the first page's document."""
        import requests

        o = self.options
        per_item = float(self.expected)
        limit = self._limit(per_item)
        method, href, req = "POST", self.search_url, dict(body)
        failures = 0
        while not self.stop.is_set():
            if method == "POST":
                req["limit"] = limit
            try:
                if method == "POST":
                    r = self._session().post(href, json=req, timeout=(o.connect_timeout, o.read_timeout))
                else:
                    r = self._session().get(href, timeout=(o.connect_timeout, o.read_timeout))
            except requests.RequestException as err:
                raise PlanError(
                    f"STAC API {self.url} search failed ({_reason(err)}{_after(err, o.retries)}); retry later "
                    "or check the API status"
                ) from None
            if r.status_code in TOO_BIG_STATUSES:
                if method == "POST" and limit > 1:
                    limit = max(1, limit // 2)
                    with self.stats._lock:
                        self.stats.halvings += 1
                    log.info("search: HTTP %d for a page of %d items; asking again with %d", r.status_code,
                             req["limit"], limit)
                    continue
                failures += 1
                if failures <= o.retries:
                    time.sleep(min(o.backoff_max, o.backoff * 2 ** (failures - 1)))
                    continue
            if r.status_code >= 400:
                if 400 <= r.status_code < 500 and r.status_code not in (429, 413):
                    raise PlanError(
                        f"STAC API {self.url} rejected the search (HTTP {r.status_code}: {_server_message(Exception(r.text))}); "
                        "check `collection`, `bbox`/`aoi` and the dates"
                    )
                raise PlanError(
                    f"STAC API {self.url} search failed (HTTP {r.status_code} after {o.retries} retries); retry later "
                    "or check the API status"
                )
            failures = 0
            try:
                doc = _decode(r.content)
            except ValueError:
                raise PlanError(f"STAC API {self.url} answered a search page that is not JSON; retry later") from None
            feats = doc.get("features") or []
            with self.stats._lock:
                self.stats.pages += 1
                self.stats.items += len(feats)
                self.stats.bytes += len(r.content)
            if feats:
                per_item = max(per_item * 0.5, len(r.content) / len(feats)) if method == "POST" else per_item
                limit = self._limit(per_item * 1.25)
            if first is not None:
                first(doc)
                first = None
            if not self.keep(feats):
                return
            nxt = next((lk for lk in doc.get("links") or [] if lk.get("rel") == "next"), None)
            if nxt is None or not feats:
                return
            href = nxt.get("href") or href
            if isinstance(nxt.get("body"), dict):
                method = "POST"
                req = {**req, **nxt["body"]} if nxt.get("merge", False) or "collections" not in nxt["body"] else dict(nxt["body"])
            else:
                method = "GET"


def search_items(
    spec: CubeSpec,
    region: BaseGeometry | None = None,
    *,
    max_items: int | None = None,
    datetime: str | None = None,
    progress: Progress | None = None,
    options: SearchOptions = SearchOptions(),
    reduce: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    stats: SearchStats | None = None,
) -> list[dict[str, Any]]:
    """Every item of ``spec.collection`` over ``region`` (default: the spec's bbox or AOI).

    ``datetime`` defaults to the whole bins the spec covers (from the start of the bin holding
    ``spec.start`` to the end of the bin holding ``spec.end``). Returns items reduced page by page
    (``reduce``; default the minimal form with the spec's bands and mask band), de-duplicated by id,
    filtered by ``max_cloud_cover``; in the server's order within each partition, partitions in
    time order. ``stats`` (optional) is filled as the search runs.
    """
    url = spec.stac_api
    stats = stats if stats is not None else SearchStats()
    if datetime is None:
        datetime = bins_datetime(time_bins(spec.start, spec.end, spec.interval))
    where = _search_geometry(spec, region)
    client = open_client(url, options)
    check_collection(client, url, spec.collection)
    if not client.conforms_to("ITEM_SEARCH"):
        raise PlanError(f"{url} does not offer STAC item search (/search); use a STAC API that does")
    assets = [*spec.bands, spec.mask.scl_band]
    if reduce is None:
        from .plan import minimal_item

        share = Sharer()

        def reduce(item: dict[str, Any]) -> dict[str, Any]:
            return share(minimal_item(item, assets))

    base: dict[str, Any] = {"collections": [spec.collection]}
    if spec.max_cloud_cover is not None and client.conforms_to("QUERY"):
        base["query"] = {"eo:cloud_cover": {"lte": spec.max_cloud_cover}}
    stats.fields = options.use_fields and client.conforms_to("FIELDS")
    if stats.fields:
        base["fields"] = fields_for(assets)
    search_link = next((lk for lk in client.get_links("search") if (lk.extra_fields.get("method") or "GET") == "POST"), None)
    search_url = search_link.href if search_link is not None else url.rstrip("/") + "/search"

    t0 = time.perf_counter()
    seen: set[str] = set()
    lock = threading.Lock()
    results: dict[int, list[dict[str, Any]]] = {}

    def keeper(slot: int) -> Callable[[list[dict[str, Any]]], bool]:
        out = results.setdefault(slot, [])

        def keep(feats: list[dict[str, Any]]) -> bool:
            page = [f for f in feats if cloud_ok(f, spec.max_cloud_cover)]
            new = []
            with lock:  # once per page: a lock per item made the search threads queue on it
                for f in page:
                    iid = f.get("id")
                    if iid in seen or (max_items is not None and len(seen) >= max_items):
                        continue
                    seen.add(iid)
                    new.append(f)
            small = [reduce(f) for f in new]
            with lock:
                out.extend(small)
                stats.kept = len(seen)
                stats.seconds = time.perf_counter() - t0
                n = len(seen)
                if progress is not None:
                    progress(n)
            return max_items is None or n < max_items

        return keep

    expected = options.fields_item_bytes if stats.fields else options.item_bytes
    walker = _Walker(url, search_url, options, stats, keeper(0), expected)
    matched: list[int | None] = [None]

    def probe(doc: dict[str, Any]) -> None:
        m = doc.get("numberMatched")
        if m is None:
            m = (doc.get("context") or {}).get("matched")
        matched[0] = m if isinstance(m, int) else None

    # The whole search's first page tells how big it is; a big one is partitioned.
    first_body = {**base, "datetime": datetime, **where}
    big = [False]

    def keep_first(feats: list[dict[str, Any]]) -> bool:
        cont = keeper(0)(feats)
        limit = walker._limit(stats.bytes_per_item * 1.25 or expected)
        if matched[0] is not None and matched[0] > options.partition_pages * limit and cont:
            big[0] = True
            return False  # stop this walk: the partitions take over
        return cont

    walker.keep = keep_first
    walker.walk(first_body, first=probe)
    stats.matched = matched[0]
    if big[0]:
        parts = partitions(spec, datetime, where, options.concurrency)
        stats.partitions = len(parts)
        log.info("search %s: %s items match; %d partitions, %d at a time", url, matched[0], len(parts),
                 options.concurrency)

        def run(slot: int, part: dict[str, Any]) -> None:
            w = _Walker(url, search_url, options, stats, keeper(slot), walker.expected)
            w.stop = walker.stop
            w.walk({**base, **part})
            with lock:
                stats.partitions_done += 1
                stats.seconds = time.perf_counter() - t0
            log.info("search: partition %d/%d done: %s", stats.partitions_done, stats.partitions, stats.line())

        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="search") as pool:
            futures = [pool.submit(run, i + 1, p) for i, p in enumerate(parts)]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                walker.stop.set()
                raise
    else:
        stats.partitions_done = 1
    stats.seconds = time.perf_counter() - t0
    items = [it for slot in sorted(results) for it in results[slot]]
    if max_items is not None:
        items = items[:max_items]
    log.info("search %s %s: %d items (fields: %s, server-side cloud filter: %s): %s", url, spec.collection,
             len(items), stats.fields, "query" in base, stats.line())
    return items
