"""Emulated AWS for end-to-end runs of the real pipeline: moto (S3, SQS, Step Functions with its
ASL interpreter) plus a small Lambda dispatcher that runs the real handlers in this process.

What is real and what is emulated::

    test ──boto3──> moto server (S3, SQS, Step Functions: moto's ASL interpreter)
                         │ Lambda Invoke, to http://localhost:$MOTO_PORT
                         v
                    LambdaDispatcher ── POST /2015-03-31/functions/<name>/invocations
                         │   -> lambdas.planner / worker / commit .handler(event, context), in-process
                         └─ any other request: proxied to the moto server

* The state machine definition is the one ``cdk synth`` writes for the default stack
  (:func:`synth_template`), rendered with ``tests/infra/infra_helpers.render`` (placeholder ARNs:
  each Lambda ARN's function name is the template's logical id, which the dispatcher maps to the
  function's handler: ``Handler`` for zip functions, the image's ``CMD`` for the worker).
* The handlers' environment is each function's ``Environment`` from the same template, with the
  bucket and queue references resolved to the emulated ones (:meth:`AwsEmulator.function_env`).
* The queues are created with the template's attributes (visibility, retention, redrive to the
  dead-letter queue after ``maxReceiveCount`` receives).
* Scenes are COGs in the emulated S3 (``s3://<bucket>/scenes/...``), read by GDAL through
  ``AWS_S3_ENDPOINT``; their catalog is a rustac STAC API with ``s3://`` asset hrefs.

* The handlers run in threads of this process, not one process per concurrent invocation as in
  Lambda: they share module state (the cached deployment and queue, GDAL's caches, Powertools'
  logger and metrics), and the process environment is the union of the three functions'.

Emulator gaps are worked around here, never in the product: :data:`EMULATOR_GAPS` lists them, and
:func:`harness_definition` makes the harness's copy of the definition (a float
``ToleratedFailurePercentage``, shorter waits and retry intervals).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
import zipfile
from copy import deepcopy
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA_TESTS = ROOT / "tests" / "infra"
if str(INFRA_TESTS) not in sys.path:
    sys.path.insert(0, str(INFRA_TESTS))

from infra_helpers import ACCOUNT, REGION, definition  # noqa: E402  (tests/infra: placeholder-ARN rendering)

SCENES_PREFIX = "scenes"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/cubeless-e2e"

#: Warnings of the handlers run in threads (Powertools on an idle worker; rasterio on tiny edge
#: windows, which execute_task silences per process, not per thread).
QUIET = [
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]

#: Emulator gaps and how the harness copy of the definition (or the harness) works around them.
EMULATOR_GAPS = {
    "tolerated-failure-float": "moto refuses an integer ToleratedFailurePercentage (CDK renders 100.0 as 100): "
    "the harness copy writes it as a float.",
    "lambda-without-docker": "moto's Lambda needs Docker: Lambda invokes go to LambdaDispatcher (MOTO_PORT), "
    "which runs the real handler in-process and answers like Lambda (X-Amz-Function-Error on an exception).",
    "distributed-map-failures": "moto's Distributed Map ignores ToleratedFailurePercentage: a failed lane "
    "(child execution) never fails the Map. That is exactly AWS's behaviour at the stack's 100 %, so failure "
    "paths run on the Distributed copy; AwsEmulator refuses a template with less (an INLINE copy whose lanes "
    "do not catch would be needed to see a Map fail).",
    "time": "not a gap, a compression: Wait states last 1 s, Retry intervals are scaled by 0.1 (at least 1 s), "
    "the worker's first retry delay is 1 s (CUBELESS_RETRY_DELAY; 10 s deployed), and a worker call's context "
    "reports worker_seconds (default 17 s: it takes tasks for ~2 s, then stops at the 15 s reserve) instead of the "
    "template's 90 s timeout, so a call takes one or two tasks and a lane's calls and rounds are exercised.",
    "function-url": "no Lambda Function URLs: the stack output TilesUrl is a placeholder address; the tile "
    "function's handler is driven with Function URL events in tests/handlers/test_tiles.py, and `cubeless view` "
    "against a stand-in URL in tests/handlers/test_view.py.",
    "stack-outputs": "no CloudFormation deploy: a stack holding only the template's Outputs (resolved to the "
    "emulated resources) lets `cubeless start/status/redrive --stack` find the deployment.",
}


# -- the synthesized template ----------------------------------------------------------------------


def _synth_main(outdir: str) -> None:
    """Synthesize the default stack into ``outdir`` (run in a subprocess: jsii spawns node)."""
    import aws_cdk as cdk

    from infra.settings import Settings
    from infra.stack import CubelessStack

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    layer = out / "placeholder-layer.zip"
    with zipfile.ZipFile(layer, "w") as zf:
        zf.writestr("python/placeholder.py", "# stands in for layers/build.py's zip\n")
    for name in [n for n in os.environ if n.startswith("CUBELESS_")]:
        del os.environ[name]  # the defaults, whatever this shell has
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(out / "cdk.out"), context=context)
    settings = Settings()
    CubelessStack(app, settings.stack_name, settings=settings, layer_zip=str(layer), stack_name=settings.stack_name)
    app.synth()
    shutil.copy(out / "cdk.out" / f"{settings.stack_name}.template.json", out / "template.json")


def shared_dir(tmp_path_factory: Any, worker_id: str) -> Path:
    """A directory every xdist worker of this test run shares (the synth is done once for all)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def synth_template(shared_dir: Path) -> dict[str, Any]:
    """The default stack's CloudFormation template, synthesized once per ``shared_dir`` (file lock).

    The infra tests' synth of the same app (``tests/infra/conftest.py``), when it is already done
    in this test run, is reused.
    """
    shared_dir.mkdir(parents=True, exist_ok=True)
    infra = shared_dir / "cubeless-cdk.out"
    if (infra / "manifest.json").exists() and (infra / "cubeless.template.json").exists():
        return json.loads((infra / "cubeless.template.json").read_text())
    outdir = shared_dir / "cubeless-aws-e2e-synth"
    with open(shared_dir / "cubeless-aws-e2e-synth.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (outdir / "template.json").exists():
            env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CDK_DISABLE_CLI_TELEMETRY": "true"}
            proc = subprocess.run(
                [sys.executable, __file__, "synth", str(outdir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            if proc.returncode != 0:
                raise RuntimeError(f"cdk synth failed:\n{proc.stderr[-4000:]}")
    return json.loads((outdir / "template.json").read_text())


def function_handlers(template: Mapping[str, Any]) -> dict[str, str]:
    """Logical id of each Lambda function -> its handler (``lambdas.worker.handler``)."""
    out = {}
    for logical, res in template["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        props = res["Properties"]
        if props.get("PackageType") == "Image":
            command = (props.get("ImageConfig") or {}).get("Command") or _dockerfile_cmd()
            out[logical] = command[0]
        else:
            out[logical] = props["Handler"]
    return out


def _dockerfile_cmd() -> list[str]:
    text = (ROOT / "containers" / "worker" / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD\s+(\[.*\])\s*$", text, flags=re.M)
    return json.loads(cmd)


def resolve(node: Any, refs: Mapping[str, str]) -> Any:
    """Resolve ``Ref`` / ``Fn::GetAtt`` / ``Fn::Join`` with concrete values of the emulated resources."""
    if isinstance(node, list):
        return [resolve(n, refs) for n in node]
    if not isinstance(node, dict):
        return node
    if "Ref" in node:
        return refs[node["Ref"]]
    if "Fn::GetAtt" in node:
        logical, attr = node["Fn::GetAtt"]
        return refs[f"{logical}.{attr}"]
    if "Fn::Join" in node:
        sep, parts = node["Fn::Join"]
        return sep.join(str(resolve(p, refs)) for p in parts)
    return {k: resolve(v, refs) for k, v in node.items()}


def _walk_states(states: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in states.items():
        yield name, state
        inner = state.get("ItemProcessor") or state.get("Iterator")
        if inner:
            yield from _walk_states(inner["States"])


def harness_definition(template: Mapping[str, Any], *, wait_seconds: float | None = 1, retry_scale: float = 1.0) -> dict[str, Any]:
    """The synthesized definition, with the harness's changes (and only these).

    * emulator gap: ``ToleratedFailurePercentage`` as a float (moto's parser refuses ``100``);
    * time compression: Wait states last ``wait_seconds``; retry intervals (and max delays) of
      every Retrier are multiplied by ``retry_scale`` (at least 1 s, as ASL requires).
    """
    d = deepcopy(definition(dict(template)))
    for _, state in _walk_states(d["States"]):
        if state["Type"] == "Map" and "ToleratedFailurePercentage" in state:
            state["ToleratedFailurePercentage"] = float(state["ToleratedFailurePercentage"])
        if state["Type"] == "Wait" and wait_seconds is not None and "Seconds" in state:
            state["Seconds"] = max(0, int(wait_seconds))
        for retrier in state.get("Retry", []):
            for key in ("IntervalSeconds", "MaxDelaySeconds"):
                if key in retrier and retry_scale != 1.0:
                    retrier[key] = max(1, int(round(retrier[key] * retry_scale)))
    return d


def tolerated_failure_percentages(template: Mapping[str, Any]) -> list[float]:
    """``ToleratedFailurePercentage`` of every Distributed Map of the definition."""
    return [
        float(state.get("ToleratedFailurePercentage", 0))
        for _, state in _walk_states(definition(dict(template))["States"])
        if state["Type"] == "Map" and state.get("ItemProcessor", {}).get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"
    ]


# -- the Lambda dispatcher -----------------------------------------------------------------------


@dataclass
class FakeContext:
    """The attributes of a Lambda context the handlers (Powertools) read."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    timeout_s: float = 900.0
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "2025/01/01/[$LATEST]harness"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


@dataclass
class Invocation:
    """One Lambda invocation the dispatcher served."""

    function: str  #: handler, e.g. ``lambdas.worker.handler``
    event: Any
    started: float
    ended: float = 0.0
    result: Any = None
    error: str | None = None  #: ``errorType: errorMessage`` when the handler raised

    @property
    def module(self) -> str:
        return self.function.rsplit(".", 2)[-2]


class LambdaDispatcher:
    """An HTTP server standing in for the Lambda endpoint of moto's ASL interpreter.

    ``POST /2015-03-31/functions/<name>/invocations`` runs the handler mapped to ``<name>``
    (a function name or ARN) in a thread of this process and answers as Lambda does (an exception:
    status 200, ``X-Amz-Function-Error: Unhandled`` and ``{"errorType", "errorMessage"}``, so the
    state machine's Retry and Catch match on the error's class name); anything else is proxied to
    ``upstream`` (the moto server). Not emulated: the function timeout (the state machine's
    ``TimeoutSeconds`` still applies) and one process per concurrent invocation.
    """

    def __init__(self, upstream: str, functions: Mapping[str, str], timeouts: Mapping[str, float] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.functions = dict(functions)
        self.timeouts = dict(timeouts or {})
        self.invocations: list[Invocation] = []
        self._lock = threading.Lock()
        dispatcher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self) -> None:
                body = self._body()
                m = re.match(r"^/2015-03-31/functions/([^/]+)/invocations$", urlsplit(self.path).path)
                if self.command == "POST" and m:
                    status, headers, out = dispatcher.invoke(unquote(m.group(1)), body)
                else:
                    status, headers, out = dispatcher.proxy(self.command, self.path, dict(self.headers), body)
                self._send(status, headers, out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="lambda-dispatcher", daemon=True)

    def __enter__(self) -> "LambdaDispatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handler_for(self, name: str) -> str:
        fn = name.split(":function:", 1)[-1].split(":", 1)[0]
        try:
            return self.functions[fn]
        except KeyError:
            raise KeyError(f"no function {fn!r} in the template (known: {sorted(self.functions)})") from None

    def invoke(self, name: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            target = self.handler_for(name)
        except KeyError as err:
            msg = json.dumps({"__type": "ResourceNotFoundException", "message": str(err)}).encode()
            return 404, {"Content-Type": "application/json", "x-amzn-ErrorType": "ResourceNotFoundException"}, msg
        event = json.loads(body) if body else {}
        module, func = target.rsplit(".", 1)
        handler = getattr(importlib.import_module(module), func)
        fn_name = name.split(":function:", 1)[-1].split(":", 1)[0]
        context = FakeContext(function_name=fn_name, timeout_s=self.timeouts.get(fn_name, 900.0))
        inv = Invocation(function=target, event=event, started=time.monotonic())
        with self._lock:
            self.invocations.append(inv)
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": context.aws_request_id}
        try:
            inv.result = handler(event, context)
            payload = json.dumps(inv.result).encode()
        except Exception as exc:  # what Lambda does with an unhandled exception
            inv.error = f"{type(exc).__name__}: {exc}"
            headers["X-Amz-Function-Error"] = "Unhandled"
            payload = json.dumps(
                {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "requestId": context.aws_request_id,
                    "stackTrace": traceback.format_tb(exc.__traceback__),
                }
            ).encode()
        finally:
            inv.ended = time.monotonic()
        return 200, headers, payload

    def proxy(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def calls(self, module: str, since: int = 0) -> list[Invocation]:
        """Invocations of ``module`` (``planner``, ``worker``, ``commit``) from index ``since`` on."""
        with self._lock:
            return [i for i in self.invocations[since:] if i.module == module]

    def timeline(self, since: int = 0) -> str:
        """The invocations from ``since`` on, one line each (start offset, duration, what): for failure messages."""
        with self._lock:
            invs = self.invocations[since:]
        if not invs:
            return "(no invocations)"
        t0 = invs[0].started
        lines = []
        for i in invs:
            what = i.error or json.dumps(i.result, default=str)
            lines.append(f"+{i.started - t0:6.1f}s {((i.ended or time.monotonic()) - i.started):5.1f}s {i.module:8s} {what[:160]}")
        return "\n".join(lines)

    def mark(self) -> int:
        """An index into :attr:`invocations`, to count what happens after it."""
        with self._lock:
            return len(self.invocations)


# -- the emulated deployment -----------------------------------------------------------------------


@dataclass
class Execution:
    """A finished (or stopped) execution, as ``describe_execution`` tells it."""

    arn: str
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    seconds: float = 0.0


class AwsEmulator:
    """moto + the dispatcher + the stack's bucket, queues and state machines (see the module doc).

    Use as a context manager; it sets (and on exit restores) the process environment the handlers,
    boto3, s3fs and GDAL read, and moto's ``execute_state_machine`` switch.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        retry_delay: float = 1.0,
        wait_seconds: float = 1,
        retry_scale: float = 0.1,
        worker_seconds: float | None = 17.0,
    ) -> None:
        self.template = template
        # moto's backends are process-wide (shared by every moto server of this process): names are unique.
        #: the bucket, the state machine and the CloudFormation stack (``--stack``) of this deployment
        self.name = f"cubeless-e2e-{uuid.uuid4().hex[:8]}"
        self.bucket = self.name
        self.retry_delay = retry_delay
        self.wait_seconds = wait_seconds
        self.retry_scale = retry_scale
        self.worker_seconds = worker_seconds
        self._stack = contextlib.ExitStack()
        self._env_saved: dict[str, str | None] = {}
        self.state_machine_arn = ""

    # -- setup -------------------------------------------------------------------------------
    def __enter__(self) -> "AwsEmulator":
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        from moto.core.config import default_user_config

        tolerated = tolerated_failure_percentages(self.template)
        if any(t < 100 for t in tolerated):
            raise NotImplementedError(
                f"ToleratedFailurePercentage {tolerated}: moto's Distributed Map never fails on failed lanes, "
                "which matches AWS only at 100; failure paths would need an INLINE copy of the Map"
            )
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        sfn_config = default_user_config.setdefault("stepfunctions", {})
        previous = sfn_config.get("execute_state_machine", False)
        sfn_config["execute_state_machine"] = True
        self._stack.callback(sfn_config.__setitem__, "execute_state_machine", previous)

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self._stack.callback(self._server.stop)
        host, port = self._server.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"

        handlers = function_handlers(self.template)
        timeouts = {k: float(v["Properties"].get("Timeout", 3)) for k, v in self.template["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
        if self.worker_seconds is not None:
            for k, h in handlers.items():
                if h == "lambdas.worker.handler":
                    timeouts[k] = min(timeouts[k], self.worker_seconds)
        self.dispatcher = self._stack.enter_context(LambdaDispatcher(self.moto_url, handlers, timeouts))

        self._setenv(
            {
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": None,
                "AWS_SECURITY_TOKEN": None,
                "AWS_PROFILE": None,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                # GDAL's /vsis3/ on the moto server
                "AWS_S3_ENDPOINT": f"{host}:{port}",
                "AWS_HTTPS": "NO",
                "AWS_VIRTUAL_HOSTING": "FALSE",
                # moto's ASL interpreter invokes Lambda at http://localhost:$MOTO_PORT
                "MOTO_PORT": str(self.dispatcher.port),
            }
        )
        self.s3 = self.client("s3")
        self.sqs = self.client("sqs")
        self.sfn = self.client("stepfunctions")
        self.s3.create_bucket(Bucket=self.bucket)
        self._create_queues()
        self._setenv(self.function_env())
        self._clear_handler_caches()
        self.state_machine_arn = self.create_state_machine(self.name)
        self._stack.callback(self.stop_all)
        self._deploy_outputs()

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stack.close()
        finally:
            for k, v in self._env_saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._env_saved.clear()
            self._clear_handler_caches()

    def _setenv(self, values: Mapping[str, str | None]) -> None:
        for k, v in values.items():
            self._env_saved.setdefault(k, os.environ.get(k))
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    @staticmethod
    def _clear_handler_caches() -> None:
        """Forget clients made for another endpoint: the handlers' deployment and queue, and
        fsspec's cached S3 filesystems (keyed by arguments, not by ``AWS_ENDPOINT_URL``)."""
        from s3fs import S3FileSystem

        from lambdas import env

        env.deployment.cache_clear()
        env.queue.cache_clear()
        env.dead_letter_queue.cache_clear()
        S3FileSystem.clear_instance_cache()

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.moto_url)

    def _queue_resources(self) -> tuple[str, str]:
        """Logical ids of (task queue, dead-letter queue) in the template."""
        queues = {k: v["Properties"] for k, v in self.template["Resources"].items() if v["Type"] == "AWS::SQS::Queue"}
        (main,) = [k for k, p in queues.items() if "RedrivePolicy" in p]
        dlq = main_dlq = queues[main]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        assert main_dlq in queues
        return main, dlq

    def _create_queues(self) -> None:
        main, dlq = self._queue_resources()
        res = self.template["Resources"]
        suffix = uuid.uuid4().hex[:6]

        def attrs(props: Mapping[str, Any]) -> dict[str, str]:
            keep = ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds")
            return {k: str(props[k]) for k in keep if k in props}

        self.dlq_url = self.sqs.create_queue(QueueName=f"cubeless-dlq-{suffix}", Attributes=attrs(res[dlq]["Properties"]))["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        props = res[main]["Properties"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": int(props["RedrivePolicy"]["maxReceiveCount"])}
        self.max_receive_count = redrive["maxReceiveCount"]
        self.queue_url = self.sqs.create_queue(
            QueueName=f"cubeless-tasks-{suffix}", Attributes={**attrs(props), "RedrivePolicy": json.dumps(redrive)}
        )["QueueUrl"]
        self._refs = {
            main: self.queue_url,
            dlq: self.dlq_url,
            f"{main}.Arn": self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"],
            f"{dlq}.Arn": dlq_arn,
        }
        for k, v in res.items():
            if v["Type"] == "AWS::S3::Bucket":
                self._refs[k] = self.bucket
                self._refs[f"{k}.Arn"] = f"arn:aws:s3:::{self.bucket}"

    def _deploy_outputs(self) -> None:
        """A CloudFormation stack (:attr:`name`) in moto whose outputs are the template's, with the
        emulated resources' values: what ``cubeless start/status/redrive --stack`` read."""
        refs = {**self._refs}
        for k, v in self.template["Resources"].items():
            if v["Type"] == "AWS::StepFunctions::StateMachine":
                refs[k] = self.state_machine_arn
            elif v["Type"] == "AWS::Lambda::Url":  # see EMULATOR_GAPS["function-url"]
                refs[f"{k}.FunctionUrl"] = f"https://{k.lower()}.lambda-url.{REGION}.on.aws/"
            elif v["Type"] == "AWS::Lambda::Function":
                refs[f"{k}.Arn"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{k}"
            refs.setdefault(k, k)
        outputs = {k: {"Value": str(resolve(v["Value"], refs))} for k, v in self.template.get("Outputs", {}).items()}
        self.outputs = {k: v["Value"] for k, v in outputs.items()}
        body = {"Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{self.name}-stack-marker"}}}, "Outputs": outputs}
        self.client("cloudformation").create_stack(StackName=self.name, TemplateBody=json.dumps(body))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``cubeless ARGS --stack <name>`` in a subprocess (it reaches moto like a user's shell)."""
        cmd = [sys.executable, "-m", "cubeless.cli", *args, "--stack", self.name]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "250"})

    def function_env(self) -> dict[str, str]:
        """The union of the functions' environments from the template (resolved), for this process.

        Shared keys must agree (they do: ``infra/functions.py`` gives every function the same
        ``CUBELESS_*``), except the per-function Powertools service name, which is left out.
        The STAC API of the harness (127.0.0.1) is added to the allowed hosts (a deployment
        setting: ``stac_hosts``); the worker's first retry delay is ``retry_delay``.
        """
        env: dict[str, str] = {}
        for res in self.template["Resources"].values():
            if res["Type"] != "AWS::Lambda::Function":
                continue
            for k, v in resolve(res["Properties"].get("Environment", {}).get("Variables", {}), self._refs).items():
                if k == "POWERTOOLS_SERVICE_NAME":
                    continue
                if k in env and env[k] != v:
                    raise AssertionError(f"functions disagree on {k}: {env[k]!r} vs {v!r}")
                env[k] = str(v)
        env["CUBELESS_ALLOWED_HOSTS"] = ",".join([*env.get("CUBELESS_ALLOWED_HOSTS", "").split(","), "127.0.0.1"]).strip(",")
        env["CUBELESS_RETRY_DELAY"] = str(self.retry_delay)
        return env

    def create_state_machine(self, name: str) -> str:
        d = harness_definition(self.template, wait_seconds=self.wait_seconds, retry_scale=self.retry_scale)
        return self.sfn.create_state_machine(name=name, definition=json.dumps(d), roleArn=ROLE_ARN, type="STANDARD")["stateMachineArn"]

    # -- scenes ------------------------------------------------------------------------------
    def upload_scene_set(self, scene_set: Any, prefix: str = SCENES_PREFIX, catalog_dir: Path | None = None) -> Any:
        """Upload the set's COGs to ``s3://<bucket>/<prefix>/`` and return it with ``s3://`` hrefs."""
        from cubeless.demo.synthetic import rebase

        data = Path(scene_set.root) / "data"
        for path in sorted(p for p in data.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(scene_set.root).as_posix()}"
            self.s3.upload_file(str(path), self.bucket, key)
        return rebase(scene_set, f"s3://{self.bucket}/{prefix}", catalog_dir)

    @contextlib.contextmanager
    def worker_call_seconds(self, seconds: float) -> Iterator[None]:
        """Worker calls started meanwhile see ``seconds`` in their context (instead of
        ``worker_seconds``): just above the 15 s reserve, a call takes exactly one task."""
        keys = [k for k, h in self.dispatcher.functions.items() if h == "lambdas.worker.handler"]
        before = {k: self.dispatcher.timeouts.get(k) for k in keys}
        self.dispatcher.timeouts.update({k: seconds for k in keys})
        try:
            yield
        finally:
            for k, v in before.items():
                if v is None:
                    self.dispatcher.timeouts.pop(k, None)
                else:
                    self.dispatcher.timeouts[k] = v

    # -- runs --------------------------------------------------------------------------------
    def pipeline(self) -> Any:
        from cubeless.aws import Pipeline

        return Pipeline(self.state_machine_arn, sfn=self.sfn)

    def wait(self, arn: str, timeout: float = 240.0, poll: float = 0.5) -> Execution:
        """Poll ``describe_execution`` until the execution is no longer RUNNING (bounded)."""
        t0 = time.monotonic()
        while True:
            d = self.sfn.describe_execution(executionArn=arn)
            if d["status"] != "RUNNING":
                out = d.get("output")
                return Execution(arn, d["status"], json.loads(out) if out else None, d.get("error"), d.get("cause"), time.monotonic() - t0)
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"execution {arn} still RUNNING after {timeout:.0f} s; history tail: {self.history_tail(arn)}")
            time.sleep(poll)

    def history_tail(self, arn: str, n: int = 8) -> list[str]:
        try:
            events = self.sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=n)["events"]
        except Exception as exc:  # noqa: BLE001
            return [f"(no history: {exc})"]
        return [f"{e['type']} {json.dumps({k: v for k, v in e.items() if k.endswith('Details')}, default=str)[:300]}" for e in events]

    def stop_all(self) -> None:
        """Stop every execution still running (so no thread invokes a handler after the test)."""
        if not self.state_machine_arn:
            return
        running = self.sfn.list_executions(stateMachineArn=self.state_machine_arn, statusFilter="RUNNING")["executions"]
        for e in running:
            with contextlib.suppress(Exception):
                self.sfn.stop_execution(executionArn=e["executionArn"], error="HarnessTeardown")
        t0 = time.monotonic()  # let invocations in flight finish while the servers are still up
        while any(i.ended == 0.0 for i in list(self.dispatcher.invocations)) and time.monotonic() - t0 < 60:
            time.sleep(0.1)

    # -- queues ------------------------------------------------------------------------------
    def queue(self) -> Any:
        from cubeless.aws import TaskQueue

        return TaskQueue(self.queue_url, spill_uri=f"s3://{self.bucket}/_queue", sqs=self.sqs, s3=self.s3)

    def dead_letter_queue(self) -> Any:
        from cubeless.aws import TaskQueue

        return TaskQueue(self.dlq_url, sqs=self.sqs, s3=self.s3)

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def peek(self, queue_url: str) -> list[dict[str, Any]]:
        """The messages visible in a queue, left in place (received with a zero visibility timeout)."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(3):
            resp = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, MessageAttributeNames=["All"], AttributeNames=["All"])
            for m in resp.get("Messages", []):
                seen[m["MessageId"]] = m
        return list(seen.values())

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


class Stage:
    """An :class:`AwsEmulator` with a scene set in its S3, a STAC API listing it with ``s3://``
    hrefs, and fault-free local reference cubes (the local runner on the same specs).

    ``with Stage(template, scene_set, workdir) as stage: stage.start(doc)``.
    """

    def __init__(self, template: Mapping[str, Any], scene_set: Any, workdir: Path, **emulator: Any) -> None:
        self.emu = AwsEmulator(template, **emulator)
        self.scene_set = scene_set
        self.workdir = Path(workdir)
        self._stack = contextlib.ExitStack()
        self._references: dict[str, str] = {}

    def __enter__(self) -> "Stage":
        from cubeless.demo.stac_server import serve_scene_set

        try:
            self._stack.enter_context(self.emu)
            self.s3_scenes = self.emu.upload_scene_set(self.scene_set)
            self.stac_url = self._stack.enter_context(serve_scene_set(self.s3_scenes))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def store(self, name: str) -> str:
        return f"s3://{self.emu.bucket}/cubes/{name}.zarr"

    def start(self, doc: Mapping[str, Any], *, lanes: int | None = 2) -> Any:
        """Start (or join) the run of ``doc`` the way ``cubeless start`` does: named by its run id."""
        from cubeless.aws import RunRequest
        from cubeless.spec import parse_spec

        spec = parse_spec(dict(doc))
        return self.emu.pipeline().start(RunRequest(spec=spec, lanes=lanes), name=run_name(spec))

    def reference(self, doc: Mapping[str, Any]) -> str:
        """The local runner's cube of ``doc`` (its store replaced by a local path), built once."""
        from cubeless.runner import RunPolicy, run_local
        from cubeless.spec import parse_spec

        key = json.dumps({k: v for k, v in doc.items() if k != "store"}, sort_keys=True, default=str)
        if key not in self._references:
            store = self.workdir / f"reference-{len(self._references)}" / "cube.zarr"
            out = run_local(parse_spec({**doc, "store": str(store)}), policy=RunPolicy(workers=2, retries=0))
            assert out.complete and out.manifest is not None and not out.pool.failed, out.manifest
            self._references[key] = str(store)
        return self._references[key]

    # -- what the workers did ----------------------------------------------------------------
    def executed(self, since: int = 0) -> list[str]:
        """Task ids the worker executed (one entry per execution) after dispatcher mark ``since``."""
        return [t for i in self.emu.dispatcher.calls("worker", since) if isinstance(i.result, dict) for t in i.result.get("done", [])]

    def skipped(self, since: int = 0) -> list[str]:
        """Task ids the worker found done already (a duplicate message, deleted without work)."""
        return [t for i in self.emu.dispatcher.calls("worker", since) if isinstance(i.result, dict) for t in i.result.get("skipped", [])]

    def worker_errors(self, since: int = 0) -> list[str]:
        """Failed tries (``task_id: error``) and worker calls that raised, after mark ``since``."""
        out: list[str] = []
        for i in self.emu.dispatcher.calls("worker", since):
            if i.error:
                out.append(i.error)
            elif isinstance(i.result, dict):
                out += [f"{f['task_id']}: {f['error']}" for f in i.result.get("failed", [])]
        return out

    def worker_calls_raised(self, since: int = 0) -> list[str]:
        """Worker calls that raised (a lane's Catch ends it): none expected, task failures are recorded."""
        return [i.error for i in self.emu.dispatcher.calls("worker", since) if i.error]

    def wait_quiet(self, timeout: float = 120.0) -> None:
        """Wait until no handler invocation is in flight (e.g. a worker of a stopped execution)."""
        t0 = time.monotonic()
        while any(i.ended == 0.0 for i in list(self.emu.dispatcher.invocations)):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("a handler invocation is still running")
            time.sleep(0.1)


def wait_for(cond: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``cond`` until it is truthy (returned), or raise TimeoutError naming ``what``."""
    t0 = time.monotonic()
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(interval)


sleep = time.sleep


def run_name(spec: Any) -> str:
    """The run id a start of ``spec`` resumes or plans (what ``cubeless start`` names the execution)."""
    from cubeless.models import run_id_for
    from cubeless.plan import bins_to_fill
    from cubeless.store import cube_state

    committed, origin = cube_state(spec)
    return run_id_for(spec, bins_to_fill(spec, committed, origin))


def compare_cubes(actual: str, expected: str) -> list[str]:
    """Differences between two cubes: every variable and coordinate (values, dtype, dims, attrs)."""
    import numpy as np
    import xarray as xr

    problems: list[str] = []
    a = xr.open_zarr(actual).load()
    b = xr.open_zarr(expected).load()
    if set(a.variables) != set(b.variables):
        problems.append(f"variables differ: {sorted(a.variables)} vs {sorted(b.variables)}")
    for name in sorted(set(a.variables) & set(b.variables)):
        va, vb = a[name], b[name]
        if va.dims != vb.dims or va.dtype != vb.dtype or va.shape != vb.shape:
            problems.append(f"{name}: {va.dims} {va.dtype} {va.shape} vs {vb.dims} {vb.dtype} {vb.shape}")
            continue
        if not np.array_equal(va.values, vb.values, equal_nan=va.dtype.kind == "f"):
            diff = int((va.values != vb.values).sum())
            problems.append(f"{name}: {diff} of {va.size} values differ")
        if va.attrs != vb.attrs:
            problems.append(f"{name}: attrs differ: {va.attrs} vs {vb.attrs}")
    return problems


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "synth":
    sys.path.insert(0, str(ROOT))
    _synth_main(sys.argv[2])
