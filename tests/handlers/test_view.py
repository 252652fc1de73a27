"""`cubeless view`: the loopback proxy signs every request with SigV4 for service lambda and
forwards its path and query to the Function URL (here a tiny local server standing in for it)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
from aws_helpers import client
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cubeless.aws import SignedProxy
from cubeless.errors import UserError
from cubeless.serve import Request, make_http_server

CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/(\d{8})/eu-west-1/lambda/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)


class FunctionUrl:
    """Records each request and answers like the tile function (or with ``status``)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path as sent, headers)
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                png = self.path.split("?")[0].endswith(".png")
                body = b"\x89PNG fake" if png else json.dumps({"path": self.path}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "image/png" if png else "application/json")
                self.send_header("Cache-Control", "max-age=60" if png else "no-cache")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def upstream() -> Iterator[FunctionUrl]:
    f = FunctionUrl()
    yield f
    f.server.shutdown()
    f.server.server_close()


@pytest.fixture
def proxy(upstream: FunctionUrl) -> Iterator[tuple[SignedProxy, str]]:
    p = SignedProxy(upstream.url, region="eu-west-1", credentials=CREDENTIALS)
    server = make_http_server(p.answer, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield p, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _signature_of(method: str, sent_path: str, headers: dict[str, str], signed: list[str]) -> str:
    """The SigV4 signature of the request as the server received it (what Lambda recomputes)."""
    request = AWSRequest(method=method, url=f"http://{headers['host']}{sent_path}", headers={h: headers[h] for h in signed})
    auth = SigV4Auth(CREDENTIALS.get_frozen_credentials(), "lambda", "eu-west-1")
    request.context["timestamp"] = headers["x-amz-date"]
    return auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


def test_requests_are_signed_for_lambda_and_forwarded(upstream: FunctionUrl, proxy: tuple[SignedProxy, str]) -> None:
    _, front = proxy
    status, ctype, body = _get(f"{front}/cubes/c~x/tiles/7/66/45.png?time=1&rescale=1000,3000")
    assert (status, ctype, body) == (200, "image/png", b"\x89PNG fake")
    status, ctype, body = _get(f"{front}/cubes/c~x/point/10.02,45.01")
    assert status == 200 and ctype == "application/json"
    (m1, tile, h1), (m2, point, h2) = upstream.seen
    url = urlsplit(tile)
    assert url.path == "/cubes/c~x/tiles/7/66/45.png" and dict(parse_qsl(url.query)) == {"time": "1", "rescale": "1000,3000"}
    assert urlsplit(point).path == "/cubes/c~x/point/10.02%2C45.01"  # RFC 3986 form: what SigV4 signs
    for method, sent, headers in upstream.seen:
        m = _AUTH.match(headers["authorization"])
        assert m, headers["authorization"]
        signed = m.group(2).split(";")
        assert {"host", "x-amz-date", "x-amz-security-token", "x-cubeless-origin"} <= set(signed)
        assert headers["x-amz-security-token"] == "session-token" and headers["x-amz-date"].startswith(m.group(1))
        assert headers["x-cubeless-origin"] == front  # TileJSON's tile URLs come back through the proxy
        assert _signature_of(method, sent, headers, signed) == m.group(3)


def test_status_and_headers_come_back_and_check_names_the_fix(upstream: FunctionUrl, proxy: tuple[SignedProxy, str]) -> None:
    p, front = proxy
    p.check()  # 200
    upstream.status = 404
    assert _get(f"{front}/cubes/nope/info")[0] == 404
    upstream.status = 403
    with pytest.raises(UserError, match="refused these credentials .* lambda:InvokeFunctionUrl"):
        p.check()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed = sock.getsockname()[1]
    sock.close()
    dead = SignedProxy(f"http://127.0.0.1:{closed}/", region="eu-west-1", credentials=CREDENTIALS)
    r = dead.answer(Request("GET", "/api/cubes"))
    assert r.status == 502 and "did not answer" in json.loads(r.body)["error"]
    with pytest.raises(UserError, match=r"failed \(502\)"):
        dead.check()


def test_from_stack_reads_the_tiles_url(aws: str, upstream: FunctionUrl) -> None:
    cfn = client("cloudformation")
    name = f"cubeless-view-{time.monotonic_ns()}"
    template = {"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}, "Outputs": {"TilesUrl": {"Value": upstream.url}}}
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(template))
    p = SignedProxy.from_stack(name, cfn=cfn)
    assert p.url == upstream.url.rstrip("/") and p.region == "us-east-1"  # the session's: a local URL names none
    p.check()
    assert "/us-east-1/lambda/aws4_request, " in upstream.seen[0][2]["authorization"]
    bare = f"cubeless-old-{time.monotonic_ns()}"
    cfn.create_stack(StackName=bare, TemplateBody=json.dumps({"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}))
    with pytest.raises(UserError, match="has no tile function .*npx cdk deploy"):
        SignedProxy.from_stack(bare, cfn=cfn)
    # the region of a real Function URL comes from its host
    real = "https://abc123.lambda-url.ap-southeast-2.on.aws/"
    cfn.create_stack(StackName=f"{bare}-real", TemplateBody=json.dumps({**template, "Outputs": {"TilesUrl": {"Value": real}}}))
    assert SignedProxy.from_stack(f"{bare}-real", cfn=cfn).region == "ap-southeast-2"


@pytest.mark.parametrize(
    "unset, extra, needle",
    [
        ((), {}, "stack 'nope' is not deployed"),
        (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), {}, "no AWS credentials found"),
        (("AWS_DEFAULT_REGION", "AWS_REGION"), {}, "no AWS region configured"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(aws: str, unset: tuple[str, ...], extra: dict, needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true", "NO_COLOR": "1", "COLUMNS": "400", **extra})  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "cubeless.cli", "view", "--stack", "nope", "--port", "0"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
