"""Tiles: the web map, XYZ tiles, TileJSON and points of the cubes in the stack's bucket, behind a
Lambda Function URL.

A Function URL event (payload version 2.0: ``rawPath``, ``rawQueryString``,
``requestContext.http.method``) becomes a :class:`cubeless.serve.Request` and is answered by
:func:`cubeless.serve.respond`, the function ``cubeless serve`` answers with; the body goes back
base64-encoded (gzip-compressed for text when the client accepts it). The catalog is every cube
under ``s3://<bucket>`` (two levels down), read with the function's role: read-only on the bucket.

The tile URLs in TileJSON start with the Function URL, or with the request's ``x-cubeless-origin``
header: ``cubeless view`` sends its loopback address there, so what the page loads next goes
through its signing proxy too.
"""

from __future__ import annotations

import base64
import functools
import gzip
import os
import re
from typing import Any

from cubeless.aws import ENV, ORIGIN_HEADER, ConfigError
from cubeless.serve import Catalog, Request, respond
from lambdas.observability import logger, tracer

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")
_TEXT = ("text/", "application/json", "application/javascript")


@functools.cache
def catalog() -> Catalog:
    """The cubes in the stack's bucket, found on this process's first request."""
    bucket = os.environ.get(ENV["bucket"], "").strip()
    if not bucket:
        raise ConfigError(f"environment variable {ENV['bucket']} is not set; deploy the stack (infra/tiles.py sets it)")
    return Catalog(f"s3://{bucket}")


def request_of(event: dict[str, Any]) -> Request:
    """The request a Function URL event (payload version 2.0) carries."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    origin = headers.get(ORIGIN_HEADER, "")
    if not _ORIGIN.match(origin):
        origin = f"https://{event['requestContext']['domainName']}"
    return Request(
        method=event["requestContext"]["http"]["method"],
        path=event.get("rawPath") or "/",
        query=event.get("rawQueryString") or "",
        origin=origin,
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)  # a response is a tile or the map's script
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = request_of(event)
    r = respond(catalog(), request)
    if r.status >= 500:
        logger.error("request failed", extra={"path": request.path, "query": request.query, "answer": r.body[:500].decode(errors="replace")})
    headers, body = r.headers(), b"" if request.method == "HEAD" else r.body
    accepts = (event.get("headers") or {}).get("accept-encoding", "")
    if "gzip" in accepts and r.content_type.startswith(_TEXT) and len(body) > 1024:
        body = gzip.compress(body, compresslevel=6, mtime=0)
        headers.update({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    return {"statusCode": r.status, "headers": headers, "body": base64.b64encode(body).decode(), "isBase64Encoded": True}
