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

An unreachable API, an answer that is not a STAC API, a missing collection or a rejected search
raise :class:`~cubeless.errors.PlanError` with one line naming the URL and the fix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry
from urllib3.util.retry import Retry

from .errors import PlanError
from .spec import CubeSpec
from .timebins import TimeBin, time_bins

if TYPE_CHECKING:
    from pystac_client import Client

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: throttling and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
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
    limit: int = 1000  #: items per page

    def retry(self) -> Retry:
        """The ``urllib3.Retry`` mounted on the client's session."""
        return _Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=0,
            allowed_methods=frozenset({"GET", "POST", "HEAD", "OPTIONS"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.backoff,
            backoff_max=self.backoff_max,
            backoff_jitter=self.jitter,
            respect_retry_after_header=True,
            retry_after_max=self.retry_after_max,
            raise_on_status=False,  # hand back the last answer: its status goes in the error line
        )


def bins_datetime(bins: list[TimeBin]) -> str:
    """STAC ``datetime`` interval covering whole bins (a bin's median uses all of its days)."""
    first, last = bins[0], bins[-1]
    end = last.end - timedelta(days=1)
    return f"{first.start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999Z"


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
            f"STAC API {url} is unreachable ({_reason(err)} after {options.retries} retries); "
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


def cloud_ok(item: dict[str, Any], max_cloud_cover: float | None) -> bool:
    """True if the item passes ``max_cloud_cover`` (items without ``eo:cloud_cover`` pass)."""
    if max_cloud_cover is None:
        return True
    cc = (item.get("properties") or {}).get("eo:cloud_cover")
    return cc is None or float(cc) <= max_cloud_cover


def search_items(
    spec: CubeSpec,
    region: BaseGeometry | None = None,
    *,
    max_items: int | None = None,
    datetime: str | None = None,
    progress: Progress | None = None,
    options: SearchOptions = SearchOptions(),
) -> list[dict[str, Any]]:
    """Every item of ``spec.collection`` over ``region`` (default: the spec's bbox or AOI).

    ``datetime`` defaults to the whole bins the spec covers (from the start of the bin holding
    ``spec.start`` to the end of the bin holding ``spec.end``). Returns raw item dicts in the
    server's order, de-duplicated by id, filtered by ``max_cloud_cover``.
    """
    from pystac_client.exceptions import APIError

    url = spec.stac_api
    if datetime is None:
        datetime = bins_datetime(time_bins(spec.start, spec.end, spec.interval))
    where = _search_geometry(spec, region)
    client = open_client(url, options)
    check_collection(client, url, spec.collection)
    if not client.conforms_to("ITEM_SEARCH"):
        raise PlanError(f"{url} does not offer STAC item search (/search); use a STAC API that does")
    params: dict[str, Any] = {
        "collections": [spec.collection],
        "datetime": datetime,
        "limit": options.limit,
        "max_items": max_items,
        **where,
    }
    server_query = spec.max_cloud_cover is not None and client.conforms_to("QUERY")
    if server_query:
        params["query"] = {"eo:cloud_cover": {"lte": spec.max_cloud_cover}}
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        search = client.search(**params)
        for page in search.pages_as_dicts():
            for item in page.get("features") or []:
                iid = item.get("id")
                if iid in seen or not cloud_ok(item, spec.max_cloud_cover):
                    continue
                seen.add(iid)
                items.append(item)
                if max_items is not None and len(items) >= max_items:
                    break
            if progress is not None:
                progress(len(items))
            if max_items is not None and len(items) >= max_items:
                break
    except APIError as err:
        status = getattr(err, "status_code", None)
        if status and 400 <= status < 500 and status != 429:
            raise PlanError(
                f"STAC API {url} rejected the search (HTTP {status}: {_server_message(err)}); "
                "check `collection`, `bbox`/`aoi` and the dates"
            ) from None
        raise PlanError(
            f"STAC API {url} search failed ({_reason(err)} after {options.retries} retries); retry later "
            "or check the API status"
        ) from None
    log.info("search %s %s: %d items (server-side cloud filter: %s)", url, spec.collection, len(items), server_query)
    return items
