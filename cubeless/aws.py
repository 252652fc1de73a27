"""AWS glue: the task queue (SQS), the pipeline's state machine (Step Functions), stack outputs,
the signing proxy of the tile function.

The only cubeless module that imports boto3. The Lambda handlers in ``lambdas/`` and the CLI use
it; the compute path (plan, compose, store, commit) never does.

* :class:`TaskQueue`: one SQS message per :class:`~cubeless.models.Task` (the whole task, with
  message attributes ``run_id`` and ``task_id``). :meth:`TaskQueue.enqueue` sends batches of 10
  from several threads and retries the entries SQS refused; a task body over
  :data:`MAX_BODY_BYTES` is parked in S3 and the message carries a pointer.
* :class:`Pipeline`: start a run under a deterministic execution name (its run id: a second start
  of a running run is the same execution), its status, redrive; :func:`stack_outputs`.
* :class:`Deployment`: what the stack tells its functions through ``CUBELESS_*`` variables, and
  the cube lock an execution holds (:meth:`Deployment.cube_lock`: stale once
  :func:`execution_running` says its execution ended).
* :class:`SignedProxy`: what ``cubeless view`` serves on loopback: every request forwarded to the
  stack's tile function URL (``TilesUrl``), signed with SigV4 and the caller's credentials.
* :class:`RunRequest`: the execution input: a bare spec, or ``{"spec": ..., "lanes": ..., "as_of": ...}``;
  :func:`planner_input` unwraps what the state machine hands the planner (that input and the
  execution's ARN).

Example (moto or a real account)::

    >>> queue = TaskQueue("https://sqs.us-east-1.amazonaws.com/123456789012/tasks")  # doctest: +SKIP
    >>> queue.enqueue(plan.tasks)                                                    # doctest: +SKIP
    120
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from numcodecs import Zstd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import CubelessError, SpecError, UserError
from .models import Task, TaskEncoder
from .spec import CubeSpec, did_you_mean, parse_spec
from .state import EXECUTION_TIMEOUT, CubeLock
from .timebins import last_complete_day

#: A task body larger than this is written to S3 and the message carries a pointer to it.
MAX_BODY_BYTES = 200 * 1024
#: Task bodies longer than this are sent zstd-compressed (base64), marked by the `body` attribute
#: (``zstd``; ``zlib`` is still read, for messages queued by an earlier version).
COMPRESS_OVER = 1024
_ZSTD = Zstd(level=1)
#: SQS limits: entries per SendMessageBatch, and bytes per batch (bodies plus attributes).
BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
#: Rounds of resending the entries of a batch that SQS reported as failed.
SEND_ROUNDS = 5

ENV = {
    "bucket": "CUBELESS_BUCKET",
    "queue_url": "CUBELESS_QUEUE_URL",
    "dead_letter_queue_url": "CUBELESS_DLQ_URL",
    "spill_uri": "CUBELESS_SPILL_URI",
    "lanes": "CUBELESS_LANES",
    "max_lanes": "CUBELESS_MAX_LANES",
    "allowed_hosts": "CUBELESS_ALLOWED_HOSTS",
    "retry_delay": "CUBELESS_RETRY_DELAY",
    "run_timeout": "CUBELESS_RUN_TIMEOUT",
}
#: First delay (s) before a failed task's message is visible again; doubles with every receive.
DEFAULT_RETRY_DELAY = 10.0

_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)


# -- errors ------------------------------------------------------------------------------------


class ConfigError(CubelessError):
    """The function's environment lacks a variable the stack should have set."""


class TasksPending(CubelessError):
    """Tasks of the run are neither done nor dead-lettered yet; the commit refuses to judge the run."""


class RunIncomplete(CubelessError):
    """Some of the run's tasks were dead-lettered (or never finished); the run fails with this message."""


class RunStalled(CubelessError):
    """Rounds of workers made no progress on the run's remaining tasks; the run fails with this message."""


class ExecutionConflict(UserError):
    """A run has failed so many times that starting it again is refused."""


def _client(service: str) -> Any:
    return boto3.client(service, config=_CLIENT_CONFIG)


def _require(env: Mapping[str, str], key: str) -> str:
    name = ENV[key]
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is not set; deploy the stack (infra/functions.py sets it)")
    return value


def _non_negative(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(ENV[key], "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"environment variable {ENV[key]} is {raw!r}; use a number of seconds >= 0 (default {default:g})")
    return value


# -- the deployment's settings, as the functions see them ---------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The stack's settings as seen by a function (set by ``infra/functions.py``)."""

    bucket: str  #: the bucket cubes must be stored in
    queue_url: str
    spill_uri: str  #: ``s3://bucket/prefix`` for task bodies over :data:`MAX_BODY_BYTES`
    lanes: int = 900  #: lanes (concurrent worker invocations) of a run that does not ask for a number
    max_lanes: int = 1000  #: most lanes a run may ask for
    allowed_hosts: tuple[str, ...] = ()  #: hosts of the STAC API and scene assets
    retry_delay: float = DEFAULT_RETRY_DELAY  #: first retry delay of a failed task (s), doubling per receive
    dead_letter_queue_url: str | None = None  #: where a task's message goes after its last failed try
    run_timeout: float = EXECUTION_TIMEOUT  #: the state machine's timeout (s): an execution's cube lock expires after it

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Deployment":
        """Read ``CUBELESS_*``; a missing one raises :class:`ConfigError` naming it."""
        env = os.environ if env is None else env
        hosts = tuple(h.strip() for h in env.get(ENV["allowed_hosts"], "").split(",") if h.strip())
        return cls(
            bucket=_require(env, "bucket"),
            queue_url=_require(env, "queue_url"),
            spill_uri=_require(env, "spill_uri"),
            lanes=int(env.get(ENV["lanes"], "900")),
            max_lanes=int(env.get(ENV["max_lanes"], "1000")),
            allowed_hosts=hosts,
            retry_delay=_non_negative(env, "retry_delay", DEFAULT_RETRY_DELAY),
            dead_letter_queue_url=env.get(ENV["dead_letter_queue_url"], "").strip() or None,
            run_timeout=_non_negative(env, "run_timeout", EXECUTION_TIMEOUT),
        )

    def queue(self) -> "TaskQueue":
        return TaskQueue(self.queue_url, spill_uri=self.spill_uri)

    def dead_letter_queue(self) -> "TaskQueue | None":
        return TaskQueue(self.dead_letter_queue_url) if self.dead_letter_queue_url else None

    def retry_delay_for(self, receive_count: int) -> int:
        """Seconds a failed task stays invisible after its ``receive_count``-th try (10, 20, 40, ...)."""
        return int(round(self.retry_delay * 2 ** max(0, receive_count - 1)))

    def href_policy(self) -> Any:
        """The worker's asset allowlist: https on the allowed hosts, and ``s3://`` in the stack's
        own bucket (scenes staged next to the cubes, which the functions may read anyway); no
        other bucket, no local paths."""
        from .hrefs import HrefPolicy

        return HrefPolicy.from_hosts(self.allowed_hosts, schemes=("https", "s3"), buckets=(self.bucket,))

    def admit(self, spec: CubeSpec) -> None:
        """Refuse a spec this deployment cannot serve (store elsewhere, catalog not allowed)."""
        parts = urlsplit(spec.store)
        if parts.scheme != "s3" or parts.netloc != self.bucket or not parts.path.strip("/"):
            raise SpecError(
                f"spec field `store`: {spec.store!r} is not in this stack's bucket; use s3://{self.bucket}/<prefix>.zarr"
            )
        host = (urlsplit(spec.stac_api).hostname or "").lower()
        if self.allowed_hosts and host not in {h.lower() for h in self.allowed_hosts}:
            raise SpecError(
                f"spec field `stac_api`: host {host!r} is not allowed by this stack; "
                f"use one of {', '.join(self.allowed_hosts)} or add it to the stac_hosts setting"
            )

    def cube_lock(self, store: str, execution: str, *, sfn: Any = None) -> CubeLock:
        """The cube lock of ``store`` as execution ``execution`` (its ARN) takes and releases it: no
        heartbeat; a holder is stale once its execution no longer runs (:func:`execution_running`)
        or the state machine's timeout has passed since it took the lock."""

        def is_alive(holder: Mapping[str, Any]) -> bool:
            nonlocal sfn
            sfn = sfn or _client("stepfunctions")  # made on first use: a free lock needs no client
            return execution_running(str(holder.get("execution")), sfn=sfn)

        return CubeLock(store, execution=execution, is_alive=is_alive, execution_timeout=self.run_timeout)

    def lanes_for(self, requested: int | None, tasks: int | None = None) -> int:
        """Lanes of a run: as requested (or the default), at most ``max_lanes``, at most one per task."""
        lanes = min(requested or self.lanes, self.max_lanes)
        return lanes if tasks is None else max(0, min(lanes, tasks))


# -- the execution input -------------------------------------------------------------------------


class RunRequest(BaseModel):
    """The state machine's input: the spec, optionally with run options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: CubeSpec
    #: Lanes (parallel worker loops) for this run; the stack's default when absent.
    lanes: int | None = Field(None, ge=1)
    #: When set, the spec's ``end`` is cut to the last bin complete before this instant (scheduled
    #: runs pass ``<aws.scheduler.scheduled-time>``), so a run never fills a bin still in progress.
    as_of: datetime | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON-able execution input."""
        return self.model_dump(mode="json", exclude_none=True)


#: Keys of the planner's payload from the state machine: the execution input and ``$$.Execution.Id``.
PLANNER_PAYLOAD = frozenset({"input", "execution"})
_EXECUTION_ARN = re.compile(r"^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:execution:[^:]+:[^:]+$")


def planner_input(event: Any) -> tuple[Any, str | None]:
    """(execution input, execution ARN) of a planner event: ``{"input": ..., "execution": arn}``
    from the state machine, or the bare execution input of a direct invocation (no ARN: no lock)."""
    if not (isinstance(event, Mapping) and set(event) == PLANNER_PAYLOAD):
        return event, None
    execution = event["execution"]
    if not (isinstance(execution, str) and _EXECUTION_ARN.match(execution)):
        raise ConfigError(f"the planner's `execution` is {execution!r}, not an execution ARN; the state machine passes $$.Execution.Id")
    return event["input"], execution


def execution_running(arn: str, *, sfn: Any = None) -> bool:
    """Whether Step Functions execution ``arn`` still runs (RUNNING, or PENDING_REDRIVE: about to
    run again); an execution that does not exist (or no longer does) is not running."""
    sfn = sfn or _client("stepfunctions")
    try:
        status = sfn.describe_execution(executionArn=arn)["status"]
    except ClientError as err:
        if err.response["Error"]["Code"] in ("ExecutionDoesNotExist", "InvalidArn"):
            return False
        raise
    return status in ("RUNNING", "PENDING_REDRIVE")


def parse_request(event: Any) -> RunRequest:
    """Validate an execution input (bare spec or envelope); bad input raises a one-line :class:`SpecError`."""
    if not (isinstance(event, Mapping) and "spec" in event):
        return RunRequest(spec=parse_spec(event))
    extra = sorted(set(event) - set(RunRequest.model_fields))
    if extra:
        hint = did_you_mean(extra[0], list(RunRequest.model_fields))
        raise SpecError(f"execution input field `{extra[0]}` is not known; {hint}use spec, lanes and as_of")
    spec = parse_spec(event["spec"])
    try:
        request = RunRequest.model_validate({**event, "spec": spec})
    except ValidationError as err:
        first = err.errors()[0]
        raise SpecError(f"execution input field `{first['loc'][0]}`: {first['msg']} (got {first.get('input')!r})") from None
    if request.as_of is not None:
        # The last day of the last bin that ended before as_of.
        end = last_complete_day(spec.interval, request.as_of.astimezone(timezone.utc).date())
        if end < spec.start:
            raise SpecError(f"no {spec.interval} starting at or after {spec.start} is complete at {request.as_of:%Y-%m-%d}; nothing to run yet")
        if end < spec.end:
            request = request.model_copy(update={"spec": spec.model_copy(update={"end": end})})
    return request


# -- the task queue ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One task taken from the queue (invisible to others until deleted or its timeout expires)."""

    task: Task
    receipt: str
    receive_count: int  #: 1 on the first try
    message_id: str
    body: str = ""  #: the message body as sent (what a dead-letter copy carries)
    attributes: Mapping[str, Any] | None = None  #: its message attributes, as SendMessage takes them


@dataclass(frozen=True)
class QueueDepth:
    """Approximate message counts (SQS updates them within about a minute)."""

    visible: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


class TaskQueue:
    """The SQS queue of tasks. Thread-safe; clients are created on first use."""

    def __init__(self, url: str, *, spill_uri: str | None = None, threads: int = 8, sqs: Any = None, s3: Any = None) -> None:
        self.url = url
        self.spill_uri = spill_uri.rstrip("/") if spill_uri else None
        self.threads = threads
        self._sqs = sqs
        self._s3 = s3
        self._lock = threading.Lock()
        self._max_receives: tuple[int | None] | None = None  # (value,) once read
        self._visibility: float | None = None

    @property
    def sqs(self) -> Any:
        with self._lock:
            if self._sqs is None:
                self._sqs = _client("sqs")
            return self._sqs

    @property
    def s3(self) -> Any:
        with self._lock:
            if self._s3 is None:
                self._s3 = _client("s3")
            return self._s3

    # -- sending -----------------------------------------------------------------------------
    def _entry(self, task: Task, encode: TaskEncoder | None = None) -> dict[str, Any]:
        raw = (encode or TaskEncoder())(task)
        body = raw.decode()
        attrs = {
            "run_id": {"DataType": "String", "StringValue": task.run_id},
            "task_id": {"DataType": "String", "StringValue": task.task_id},
        }
        if len(body) > COMPRESS_OVER:
            # A task's STAC items are repetitive JSON: zstd shrinks ~70 KiB to ~2 KiB, so 10
            # tasks fit a batch and far fewer bytes are sent and parsed per task. zstd level 1
            # (numcodecs, zarr's codec library) is 3x faster than zlib level 1 and smaller.
            packed = base64.b64encode(_ZSTD.encode(raw)).decode("ascii")
            if len(packed) < len(body):
                body = packed
                attrs["body"] = {"DataType": "String", "StringValue": "zstd"}
        if len(body) > MAX_BODY_BYTES:
            body = self._spill(task, raw.decode())
            attrs["body"] = {"DataType": "String", "StringValue": "s3"}
        return {"Id": "0", "MessageBody": body, "MessageAttributes": attrs}

    def _spill(self, task: Task, body: str) -> str:
        if not self.spill_uri:
            raise ConfigError(f"task {task.task_id} is {len(body)} bytes, over SQS's limit, and no spill location is set ({ENV['spill_uri']})")
        bucket, _, prefix = self.spill_uri.removeprefix("s3://").partition("/")
        key = "/".join(p for p in (prefix, task.run_id, task.task_id + ".json") if p)
        self.s3.put_object(Bucket=bucket, Key=key, Body=body.encode(), ContentType="application/json")
        return json.dumps({"run_id": task.run_id, "task_id": task.task_id, "task_uri": f"s3://{bucket}/{key}"})

    def _batches(self, tasks: Iterable[Task]) -> Iterator[list[dict[str, Any]]]:
        """Entries packed into batches of at most 10 entries and 256 KiB."""
        batch: list[dict[str, Any]] = []
        size = 0
        encode = TaskEncoder()
        for task in tasks:
            entry = self._entry(task, encode)
            n = _entry_bytes(entry)
            if batch and (len(batch) == BATCH_ENTRIES or size + n > MAX_BATCH_BYTES):
                yield batch
                batch, size = [], 0
            entry["Id"] = str(len(batch))
            batch.append(entry)
            size += n
        if batch:
            yield batch

    def _send(self, batch: list[dict[str, Any]]) -> int:
        """Send one batch; resend the entries SQS refused (throttling, internal errors) with backoff."""
        pending = batch
        for round_ in range(SEND_ROUNDS):
            resp = self.sqs.send_message_batch(QueueUrl=self.url, Entries=pending)
            failed = {f["Id"]: f for f in resp.get("Failed", [])}
            if not failed:
                return len(batch)
            if any(f.get("SenderFault") for f in failed.values()):
                first = next(f for f in failed.values() if f.get("SenderFault"))
                raise CubelessError(f"SQS refused a task message: {first.get('Code')}: {first.get('Message')}")
            pending = [e for e in pending if e["Id"] in failed]
            time.sleep(random.uniform(0, 0.1 * 2**round_))
        raise CubelessError(f"SQS kept failing {len(pending)} task messages after {SEND_ROUNDS} rounds; start the run again")

    #: Batches encoded ahead of the sending threads, per thread: ``tasks`` is consumed as they send,
    #: so a streamed task list (a resumed run) is never all in memory.
    AHEAD_PER_THREAD = 4

    def enqueue(self, tasks: Iterable[Task]) -> int:
        """Send every task (one message each) in batches of 10 from several threads; return the count."""
        from collections import deque

        sent = 0
        window: deque[Any] = deque()
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="enqueue") as pool:
            for batch in self._batches(tasks):
                window.append(pool.submit(self._send, batch))
                if len(window) >= self.AHEAD_PER_THREAD * self.threads:
                    sent += window.popleft().result()
            while window:
                sent += window.popleft().result()
        return sent

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, *, wait_seconds: int = 1) -> Received | None:
        """Take one task, or None when none is visible (long polling, so an empty answer is reliable)."""
        resp = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=wait_seconds,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = resp.get("Messages") or []
        if not messages:
            return None
        msg = messages[0]
        attrs = msg.get("MessageAttributes") or {}
        body = raw = msg["Body"]
        encoding = attrs.get("body", {}).get("StringValue")
        if encoding == "s3":
            bucket, _, key = json.loads(body)["task_uri"].removeprefix("s3://").partition("/")
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        elif encoding == "zstd":
            body = bytes(_ZSTD.decode(base64.b64decode(body)))
        elif encoding == "zlib":
            body = zlib.decompress(base64.b64decode(body))
        return Received(
            task=Task.model_validate_json(body),
            receipt=msg["ReceiptHandle"],
            receive_count=int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
            message_id=msg["MessageId"],
            body=raw,
            attributes=_attrs(msg),
        )

    def delete(self, received: Received) -> None:
        """The task is done: remove its message."""
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=received.receipt)

    def retry_later(self, received: Received, seconds: int) -> None:
        """A try failed: make the message visible again after ``seconds`` (not the full timeout)."""
        self.sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=received.receipt, VisibilityTimeout=max(0, min(seconds, 43_200)))

    def dead_letter(self, received: Received, dead_letter_queue: "TaskQueue") -> None:
        """The task's last try failed: park its message in ``dead_letter_queue`` now (as SQS would on
        its next receive, which may never come once the run is over) and remove it from this queue."""
        entry = {"Id": "0", "MessageBody": received.body, "MessageAttributes": dict(received.attributes or {})}
        dead_letter_queue._send([entry])
        self.delete(received)

    def max_receives(self) -> int | None:
        """Receives after which SQS moves a message to the dead-letter queue (the queue's redrive
        policy; None without one). Read once per queue object."""
        if self._max_receives is None:
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["RedrivePolicy"])["Attributes"]
            policy = attrs.get("RedrivePolicy")
            self._max_receives = (int(json.loads(policy)["maxReceiveCount"]) if policy else None,)
        return self._max_receives[0]

    def visibility_timeout(self) -> float:
        """The queue's visibility timeout (s): how long a received message stays hidden. Read once."""
        if getattr(self, "_visibility", None) is None:
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["VisibilityTimeout"])["Attributes"]
            self._visibility = float(attrs.get("VisibilityTimeout", 30))
        return float(self._visibility)

    def depth(self) -> QueueDepth:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]
        a = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return QueueDepth(*(int(a.get(n, 0)) for n in names))

    def arn(self) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def move_to(self, target: "TaskQueue | None", *, run_id: str | None = None, limit: int | None = None) -> int:
        """Redrive: move messages (of one run, or all) from this queue (the DLQ) to ``target``.

        With ``target=None`` the messages are deleted (their run will re-plan them).
        Messages of other runs stay hidden for a minute and are left in place. Returns the count moved.
        """
        moved = 0
        while limit is None or moved < limit:
            resp = self.sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=BATCH_ENTRIES, WaitTimeSeconds=1, VisibilityTimeout=60, MessageAttributeNames=["All"]
            )
            messages = resp.get("Messages") or []
            if not messages:
                break
            chosen = [m for m in messages if run_id is None or m.get("MessageAttributes", {}).get("run_id", {}).get("StringValue") == run_id]
            chosen = chosen[: None if limit is None else limit - moved]
            if chosen:
                if target is not None:
                    entries = [{"Id": str(i), "MessageBody": m["Body"], "MessageAttributes": _attrs(m)} for i, m in enumerate(chosen)]
                    target._send(entries)
                self.sqs.delete_message_batch(
                    QueueUrl=self.url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chosen)]
                )
                moved += len(chosen)
        return moved


def _attrs(message: Mapping[str, Any]) -> dict[str, Any]:
    """A received message's string attributes, in the form SendMessage takes."""
    got = message.get("MessageAttributes") or {}
    return {k: {"DataType": v["DataType"], "StringValue": v["StringValue"]} for k, v in got.items() if "StringValue" in v}


def _entry_bytes(entry: Mapping[str, Any]) -> int:
    n = len(entry["MessageBody"].encode())
    for name, value in entry.get("MessageAttributes", {}).items():
        n += len(name.encode()) + len(value["DataType"].encode()) + len(value.get("StringValue", "").encode())
    return n


# -- the state machine ---------------------------------------------------------------------------

_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
#: Executions one run may have (its first try plus retries after failed ones).
MAX_RUN_ATTEMPTS = 20


def execution_name(run_id: str) -> str:
    """A Step Functions execution name for a run (80 characters of ``[A-Za-z0-9_-]``)."""
    return _NAME_RE.sub("-", run_id)[:80]


@dataclass(frozen=True)
class Execution:
    """A state machine execution, as far as a user needs to know."""

    arn: str
    name: str
    status: str  #: RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED, PENDING_REDRIVE
    started: datetime | None = None
    stopped: datetime | None = None
    output: Any = None
    error: str | None = None
    cause: str | None = None
    console_url: str | None = None


def stack_outputs(stack_name: str, *, cfn: Any = None) -> dict[str, str]:
    """The outputs of a deployed cubeless stack (``StateMachineArn``, ``BucketName``, ``QueueUrl``, ...)."""
    cfn = cfn or _client("cloudformation")
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as err:
        raise UserError(f"stack {stack_name!r} is not deployed in this account/region ({err.response['Error']['Code']}); deploy it with `npx cdk deploy`") from None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


class Pipeline:
    """The deployed state machine."""

    def __init__(self, state_machine_arn: str, *, sfn: Any = None) -> None:
        self.arn = state_machine_arn
        self._sfn = sfn

    @classmethod
    def from_stack(cls, stack_name: str, *, cfn: Any = None, sfn: Any = None) -> "Pipeline":
        return cls(stack_outputs(stack_name, cfn=cfn)["StateMachineArn"], sfn=sfn)

    @property
    def sfn(self) -> Any:
        if self._sfn is None:
            self._sfn = _client("stepfunctions")
        return self._sfn

    def execution_arn(self, name_or_arn: str) -> str:
        if name_or_arn.startswith("arn:"):
            return name_or_arn
        return self.arn.replace(":stateMachine:", ":execution:", 1) + ":" + name_or_arn

    def start(self, request: RunRequest, *, name: str) -> Execution:
        """Start run ``name`` (a run id), or return its execution that is running or succeeded.

        Execution names are ``<run id>``, then ``<run id>-r2``, ``-r3``... for tries after a failed
        one (a failed execution's name stays taken for 90 days). A second start of a running run
        is the same execution (Standard workflows make StartExecution idempotent), so concurrent
        starts of one run coalesce instead of racing on the same cube.
        """
        base = execution_name(name)
        payload = json.dumps(request.payload(), sort_keys=True)
        for attempt in range(1, MAX_RUN_ATTEMPTS + 1):
            current = base if attempt == 1 else f"{base[:76]}-r{attempt}"
            try:
                arn = self.sfn.start_execution(stateMachineArn=self.arn, name=current, input=payload)["executionArn"]
                return self.status(arn)
            except ClientError as err:
                if err.response["Error"]["Code"] != "ExecutionAlreadyExists":
                    raise
            existing = self.status(current)
            if existing.status in ("RUNNING", "PENDING_REDRIVE", "SUCCEEDED"):
                return existing
        raise ExecutionConflict(f"run {base} failed {MAX_RUN_ATTEMPTS} times; read the last execution's cause with `status` before trying again")

    def status(self, name_or_arn: str) -> Execution:
        d = self.sfn.describe_execution(executionArn=self.execution_arn(name_or_arn))
        output = d.get("output")
        region = d["executionArn"].split(":")[3]
        return Execution(
            arn=d["executionArn"],
            name=d["name"],
            status=d["status"],
            started=d.get("startDate"),
            stopped=d.get("stopDate"),
            output=json.loads(output) if output else None,
            error=d.get("error"),
            cause=d.get("cause"),
            console_url=f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{d['executionArn']}",
        )

    def redrive(self, name_or_arn: str) -> Execution:
        """Resume an execution that failed in a task state (e.g. a Lambda error) from that state.

        A run that failed with a one-line cause (SpecError, RunIncomplete) ended in the ``Failed``
        state, where a redrive would end again: fix the cause (or move dead-lettered tasks back with
        :meth:`TaskQueue.move_to`) and :meth:`start` the run again, which resumes it.
        """
        arn = self.execution_arn(name_or_arn)
        self.sfn.redrive_execution(executionArn=arn)
        return self.status(arn)


# -- viewing: the tile function behind its Function URL -------------------------------------------

#: The stack output holding the tile function's URL.
TILES_URL_OUTPUT = "TilesUrl"
#: The stack output naming the tile function (what a viewer's IAM policy grants invoking).
TILES_FUNCTION_OUTPUT = "TilesFunctionArn"
#: Header carrying the proxy's own address, so TileJSON's tile URLs point back at the proxy.
ORIGIN_HEADER = "x-cubeless-origin"
_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws$")


def _strict(path: str, query: str) -> str:
    """``path?query`` percent-encoded the RFC 3986 way (``,`` as ``%2C``), so the URL on the wire
    is already in the canonical form SigV4 signs and Lambda checks: nothing for the two to
    normalise differently."""
    wire = quote(unquote(path), safe="/-_.~")
    if query:
        wire += "?" + urlencode(parse_qsl(query, keep_blank_values=True), quote_via=quote, safe="-_.~")
    return wire


class SignedProxy:
    """Forwards GET and HEAD requests to a Lambda Function URL with AuthType AWS_IAM, each signed
    with SigV4 (service ``lambda``) and the caller's credentials.

    :param url: the Function URL (``https://<id>.lambda-url.<region>.on.aws/``)
    :param region: the function's region (the URL names it)
    :param credentials: botocore credentials (refreshable ones are frozen per request)
    """

    def __init__(self, url: str, *, region: str, credentials: Any, timeout: float = 60.0) -> None:
        import urllib3

        self.url = url.rstrip("/")
        self.region = region
        self.credentials = credentials
        self._http = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=10, read=timeout))

    @classmethod
    def from_stack(cls, stack_name: str, *, cfn: Any = None, session: Any = None) -> "SignedProxy":
        """The proxy of a deployed stack's tile function, with the default credential chain's credentials."""
        session = session or boto3.session.Session()
        outputs = stack_outputs(stack_name, cfn=cfn)
        url = outputs.get(TILES_URL_OUTPUT)
        if not url:
            raise UserError(f"stack {stack_name!r} has no tile function (no {TILES_URL_OUTPUT} output); "
                            "deploy this version with `npx cdk deploy`")
        credentials = session.get_credentials()
        if credentials is None:
            raise UserError("no AWS credentials found; set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        host = urlsplit(url).hostname or ""
        match = _URL_REGION.search(host)
        region = match.group(1) if match else session.region_name
        if not region:
            raise UserError("no AWS region configured; set AWS_DEFAULT_REGION (or AWS_REGION), e.g. AWS_DEFAULT_REGION=us-west-2")
        return cls(url, region=region, credentials=credentials)

    def signed_headers(self, method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` plus SigV4's (``Authorization``, ``X-Amz-Date``, a session's ``X-Amz-Security-Token``)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url, headers=dict(headers))
        SigV4Auth(self.credentials.get_frozen_credentials(), "lambda", self.region).add_auth(request)
        return dict(request.headers.items())

    def answer(self, request: Any) -> Any:
        """The function's answer to a :class:`cubeless.serve.Request` (a 502 when it cannot be reached)."""
        import urllib3

        from .serve import Response

        url = self.url + _strict(request.path, request.query)
        # gzip: the function compresses text (the map's script is ~1 MB); urllib3 decompresses it
        headers = self.signed_headers(request.method, url, {ORIGIN_HEADER: request.origin, "Accept-Encoding": "gzip"})
        try:
            r = self._http.request(request.method, url, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            body = json.dumps({"error": f"the tile function at {self.url} did not answer: {exc}"}).encode()
            return Response(502, body, "application/json")
        return Response(r.status, r.data, r.headers.get("Content-Type", "application/octet-stream"),
                        r.headers.get("Cache-Control", "no-cache"))

    def check(self) -> None:
        """One signed request of the catalog; a refusal or no answer is a :class:`UserError` naming the fix."""
        from .serve import Request

        r = self.answer(Request("GET", "/api/cubes"))
        if r.status == 403:
            raise UserError(f"the tile function at {self.url} refused these credentials (403 Forbidden); they need "
                            f"lambda:InvokeFunctionUrl and lambda:InvokeFunction on it (stack output {TILES_FUNCTION_OUTPUT})")
        if r.status >= 500:
            raise UserError(f"the tile function at {self.url} failed ({r.status}): {r.body[:300].decode(errors='replace')}")
