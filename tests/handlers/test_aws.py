"""cubeless.aws against a moto server: batching, retries, spill to S3, redrive, start/status, outputs."""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timezone
from typing import Any

import pytest
from aws_helpers import BUCKET, Queues, Run, client, spec_doc

from cubeless.aws import (
    BATCH_ENTRIES,
    MAX_BATCH_BYTES,
    ConfigError,
    Deployment,
    ExecutionConflict,
    Pipeline,
    RunRequest,
    TaskQueue,
    execution_name,
    parse_request,
    stack_outputs,
)
from cubeless.errors import CubelessError, SpecError, UserError
from cubeless.models import Task
from cubeless.spec import parse_spec


def tasks_of(run: Run, n: int, *, item_bytes: int = 0) -> list[Task]:
    """``n`` distinct tasks (the run's, re-numbered), each carrying ``item_bytes`` of incompressible item JSON."""
    import base64
    import random

    base = run.tasks[0]
    pad = base64.b64encode(random.Random(n).randbytes(item_bytes * 3 // 4)).decode()
    return [base.model_copy(update={"tile": base.tile.model_copy(update={"ix": i}), "items": [{"id": f"i{i}", "pad": pad}]}) for i in range(n)]


class CountingSQS:
    """The real (moto) client, counting SendMessageBatch calls; optionally failing entries once."""

    def __init__(self, fail_first: int = 0, sender_fault: bool = False) -> None:
        self._sqs = client("sqs")
        self.batches: list[int] = []
        self._fail = fail_first
        self._sender_fault = sender_fault

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.batches.append(len(Entries))
        if self._fail:
            failed, ok = Entries[: self._fail], Entries[self._fail :]
            self._fail = 0
            resp = self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=ok) if ok else {}
            code = "InvalidParameterValue" if self._sender_fault else "InternalError"
            return {**resp, "Failed": [{"Id": e["Id"], "SenderFault": self._sender_fault, "Code": code, "Message": "injected"} for e in failed]}
        return self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def drain(queue: TaskQueue) -> list:
    got = []
    while (r := queue.receive(wait_seconds=0)) is not None:
        got.append(r)
        queue.delete(r)
    return got


def test_enqueue_sends_batches_of_ten_and_tasks_come_back(queues: Queues, run: Run) -> None:
    sqs = CountingSQS()
    queue = queues.queue(sqs=sqs)
    tasks = tasks_of(run, 25)
    assert queue.enqueue(tasks) == 25
    assert sorted(sqs.batches) == [5, 10, 10]
    got = drain(queue)
    assert sorted(r.task.task_id for r in got) == sorted(t.task_id for t in tasks)
    assert all(r.task == t for r in got for t in tasks if t.task_id == r.task.task_id)
    assert {r.receive_count for r in got} == {1}
    assert queue.depth().total == 0


def test_enqueue_consumes_a_stream_as_it_sends(run: Run) -> None:
    # A resumed run's pending tasks are a stream: enqueue must not encode it all before sending.
    tasks = tasks_of(run, 400)
    pulled = [0]
    ahead: list[int] = []

    def stream():
        for t in tasks:
            pulled[0] += 1
            yield t

    class Sink:
        def __init__(self) -> None:
            self.sent = 0

        def send_message_batch(self, QueueUrl: str, Entries: list) -> dict:
            time.sleep(0.002)
            self.sent += len(Entries)
            ahead.append(pulled[0] - self.sent)
            return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    queue = TaskQueue("https://sqs.us-east-1.amazonaws.com/1/q", sqs=Sink(), threads=2)
    assert queue.enqueue(stream()) == 400
    window = (TaskQueue.AHEAD_PER_THREAD * 2 + 2) * BATCH_ENTRIES
    assert max(ahead) <= window < 400


def test_a_task_retried_later_comes_back_with_its_receive_count(queues: Queues, run: Run) -> None:
    queue = queues.queue()
    queue.enqueue(run.tasks[:1])
    got = queue.receive()
    assert got is not None and queue.receive(wait_seconds=0) is None  # invisible while held
    queue.retry_later(got, 0)
    again = queue.receive()
    assert again is not None and again.task == got.task and again.receive_count == 2


def test_batches_stay_under_the_sqs_batch_size(queues: Queues, run: Run) -> None:
    queue = queues.queue()
    batches = list(queue._batches(tasks_of(run, 12, item_bytes=60_000)))
    assert [len(b) for b in batches] == [4, 4, 4]  # 4 x ~60 KB fit in 256 KiB, a 5th would not
    for b in batches:
        assert sum(len(e["MessageBody"]) for e in b) <= MAX_BATCH_BYTES
        assert [e["Id"] for e in b] == [str(i) for i in range(len(b))]
    assert all(len(b) <= BATCH_ENTRIES for b in queue._batches(tasks_of(run, 31)))


def test_failed_entries_of_a_batch_are_resent(queues: Queues, run: Run) -> None:
    sqs = CountingSQS(fail_first=3)
    queue = queues.queue(sqs=sqs)
    assert queue.enqueue(tasks_of(run, 10)) == 10
    assert sqs.batches == [10, 3]
    assert len(drain(queue)) == 10


def test_a_refused_message_raises(queues: Queues, run: Run) -> None:
    queue = queues.queue(sqs=CountingSQS(fail_first=1, sender_fault=True))
    with pytest.raises(CubelessError, match="SQS refused a task message: InvalidParameterValue"):
        queue.enqueue(tasks_of(run, 2))


def test_repetitive_task_bodies_travel_compressed_ten_per_batch(queues: Queues, run: Run) -> None:
    item = {"type": "Feature", "stac_version": "1.1.0", "properties": {"datetime": "2024-05-01T10:27:00Z", "proj:code": "EPSG:32632"},
            "assets": {b: {"href": f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/32/T/LS/2024/5/S2B_32TLS_20240501_0_L2A/{b}.tif",
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized", "raster:bands": [{"scale": 0.0001, "offset": -0.1}]}
                       for b in ("red", "green", "blue", "scl")}}
    base = run.tasks[0]
    tasks = [base.model_copy(update={"tile": base.tile.model_copy(update={"ix": i}),
                                     "items": [{**item, "id": f"S2B_{i}_{k}"} for k in range(25)]}) for i in range(20)]
    raw = len(tasks[0].model_dump_json())
    queue = queues.queue()
    batches = list(queue._batches(tasks))
    assert [len(b) for b in batches] == [10, 10]  # uncompressed, only ~3 of these would fit a batch
    sent = len(batches[0][0]["MessageBody"])
    assert sent * 5 < raw, (sent, raw)
    assert batches[0][0]["MessageAttributes"]["body"]["StringValue"] == "zstd"
    queue.enqueue(tasks)
    assert sorted((r.task for r in drain(queue)), key=lambda t: t.tile.ix) == tasks


def test_a_zlib_body_queued_by_an_earlier_version_is_still_read(queues: Queues, run: Run) -> None:
    import base64
    import zlib

    task = run.tasks[0]
    queue = queues.queue()
    body = base64.b64encode(zlib.compress(task.model_dump_json().encode())).decode()
    queue.sqs.send_message(QueueUrl=queue.url, MessageBody=body,
                           MessageAttributes={"body": {"DataType": "String", "StringValue": "zlib"}})
    assert [r.task for r in drain(queue)] == [task]


def test_a_task_too_big_for_sqs_travels_through_s3(queues: Queues, run: Run) -> None:
    queue = queues.queue()
    big, small = tasks_of(run, 2, item_bytes=300_000)[0], run.tasks[1]
    queue.enqueue([big, small])
    raw = client("sqs").receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=0)
    bodies = [m["Body"] for m in raw["Messages"]]
    assert max(len(b) for b in bodies) < 200 * 1024
    pointer = next(json.loads(b) for b in bodies if "task_uri" in b)
    assert pointer["task_uri"] == f"s3://{BUCKET}/_queue/{big.run_id}/{big.task_id}.json"
    got = {r.task.task_id: r.task for r in drain(queue)}
    assert got == {big.task_id: big, small.task_id: small}


def test_spilling_without_a_location_is_a_config_error(queues: Queues, run: Run) -> None:
    with pytest.raises(ConfigError, match="CUBELESS_SPILL_URI"):
        TaskQueue(queues.url).enqueue(tasks_of(run, 1, item_bytes=300_000))


@pytest.mark.slow
def test_2000_tasks_go_out_in_200_full_batches_and_all_arrive(queues: Queues, run: Run) -> None:
    """Eight sender threads, ~5 KB bodies: every task is queued, ten per batch (the rate is
    measured by ``make bench``, 4c, not here)."""
    tasks = tasks_of(run, 2000, item_bytes=2000)  # ~5 KB bodies, like a tile with a few scenes
    queue = queues.queue(threads=8)
    assert len(list(queue._batches(tasks))) == 200
    assert queue.enqueue(tasks) == 2000
    assert queue.depth().visible == 2000


def test_move_to_redrives_one_runs_messages(queues: Queues, run: Run) -> None:
    dlq = TaskQueue(queues.dlq_url)
    mine = tasks_of(run, 3)
    other = [t.model_copy(update={"run_id": "other-run"}) for t in tasks_of(run, 2)]
    dlq.enqueue(mine + other)
    target = queues.queue()
    assert dlq.move_to(target, run_id=run.run_id) == 3
    assert sorted(r.task.task_id for r in drain(target)) == sorted(t.task_id for t in mine)
    assert dlq.depth().total == 2  # the other run's messages stay in the DLQ


def test_deployment_from_env_names_a_missing_variable() -> None:
    with pytest.raises(ConfigError, match="CUBELESS_QUEUE_URL is not set"):
        Deployment.from_env({"CUBELESS_BUCKET": "b"})
    d = Deployment.from_env(
        {"CUBELESS_BUCKET": "b", "CUBELESS_QUEUE_URL": "q", "CUBELESS_SPILL_URI": "s3://b/_q", "CUBELESS_ALLOWED_HOSTS": "a.com, b.org"}
    )
    assert (d.lanes, d.max_lanes, d.allowed_hosts, d.dead_letter_queue_url) == (900, 1000, ("a.com", "b.org"), None)
    assert d.lanes_for(None, 3) == 3 and d.lanes_for(5000, 10_000) == 1000 and d.lanes_for(None, 0) == 0
    assert (d.lanes_for(None), d.lanes_for(5000), d.lanes_for(40)) == (900, 1000, 40)
    policy = d.href_policy()
    assert policy.allows("https://a.com/x.tif") and not policy.allows("https://evil.com/x.tif")
    assert not policy.allows("/etc/passwd")


def test_admit_refuses_stores_outside_the_bucket_and_unknown_catalogs() -> None:
    d = Deployment(bucket="cubes", queue_url="q", spill_uri="s3://cubes/_q", allowed_hosts=("earth-search.aws.element84.com",))
    d.admit(parse_spec(spec_doc("s3://cubes/vt.zarr")))
    for store in ("s3://other/vt.zarr", "./vt.zarr", "s3://cubes"):
        with pytest.raises(SpecError, match="not in this stack's bucket; use s3://cubes/") as err:
            d.admit(parse_spec(spec_doc(store)))
        assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="host 'evil.example.com' is not allowed"):
        d.admit(parse_spec(spec_doc("s3://cubes/vt.zarr", stac_api="https://evil.example.com/v1")))


def test_parse_request_takes_a_bare_spec_or_an_envelope() -> None:
    doc = spec_doc("s3://cubes/vt.zarr")
    assert parse_request(doc).spec == parse_spec(doc)
    req = parse_request({"spec": doc, "lanes": 7})
    assert (req.lanes, req.as_of) == (7, None)
    assert parse_request(json.dumps(doc)).spec.name == "hx"


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"name": "hx"}, r"spec field `.*` is required; add it"),
        ({"spec": {"name": "hx"}}, r"spec field `.*` is required"),
        ({"spec": spec_doc("s3://c/x.zarr"), "lanse": 3}, r"execution input field `lanse` is not known; did you mean `lanes`\?"),
        ({"spec": spec_doc("s3://c/x.zarr"), "lanes": 0}, r"execution input field `lanes`"),
        ({"spec": spec_doc("s3://c/x.zarr"), "as_of": "soon"}, r"execution input field `as_of`"),
        ([1, 2], r"spec must be a YAML/JSON object"),
    ],
)
def test_bad_execution_input_is_one_line_spec_error(event: Any, match: str) -> None:
    with pytest.raises(SpecError, match=match) as err:
        parse_request(event)
    assert "\n" not in str(err.value)


def test_as_of_cuts_the_end_to_the_last_complete_bin() -> None:
    doc = {**spec_doc("s3://c/x.zarr"), "end": "2099-12-31"}
    req = parse_request({"spec": doc, "as_of": "2024-03-03T06:00:00Z"})
    assert req.spec.end == date(2024, 2, 29)
    assert parse_request({"spec": {**doc, "end": "2020-01-31"}, "as_of": "2024-03-03T06:00:00Z"}).spec.end == date(2020, 1, 31)
    with pytest.raises(SpecError, match="nothing to run yet"):
        parse_request({"spec": doc, "as_of": "2020-01-15T00:00:00Z"})


def test_execution_names_are_valid_and_deterministic() -> None:
    assert execution_name("vt-0123456789ab") == "vt-0123456789ab"
    assert execution_name("a.b/c" + "x" * 100) == ("a-b-c" + "x" * 100)[:80]


def _state_machine(aws: str) -> str:
    iam = client("iam")
    role = iam.create_role(RoleName=f"sfn-{time.monotonic_ns()}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    return client("stepfunctions").create_state_machine(name=f"runs-{time.monotonic_ns()}", definition=json.dumps(definition), roleArn=role)[
        "stateMachineArn"
    ]


def test_start_coalesces_a_running_run_and_retries_a_failed_one(aws: str) -> None:
    sfn = client("stepfunctions")
    pipeline = Pipeline(_state_machine(aws), sfn=sfn)
    request = RunRequest(spec=parse_spec(spec_doc("s3://cubes/vt.zarr")), lanes=3)
    first = pipeline.start(request, name="hx-0123456789ab")
    again = pipeline.start(request, name="hx-0123456789ab")
    assert first.arn == again.arn and first.name == "hx-0123456789ab" and first.status == "RUNNING"
    assert pipeline.status("hx-0123456789ab").arn == first.arn
    assert parse_request(json.loads(sfn.describe_execution(executionArn=first.arn)["input"])) == request
    sfn.stop_execution(executionArn=first.arn, error="Test", cause="stopped")
    second = pipeline.start(request, name="hx-0123456789ab")
    assert second.name == "hx-0123456789ab-r2" and second.status == "RUNNING"
    assert pipeline.start(request, name="hx-0123456789ab").arn == second.arn


def test_start_gives_up_after_many_failed_tries(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import cubeless.aws as A

    monkeypatch.setattr(A, "MAX_RUN_ATTEMPTS", 2)
    sfn = client("stepfunctions")
    pipeline = Pipeline(_state_machine(aws), sfn=sfn)
    request = RunRequest(spec=parse_spec(spec_doc("s3://cubes/vt.zarr")))
    for _ in range(2):
        sfn.stop_execution(executionArn=pipeline.start(request, name="hx-1").arn)
    with pytest.raises(ExecutionConflict, match="run hx-1 failed 2 times") as err:
        pipeline.start(request, name="hx-1")
    assert "\n" not in str(err.value)


def test_stack_outputs_reads_the_deployed_stack(aws: str) -> None:
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"QueueUrl": {"Value": {"Ref": "Q"}}, "StateMachineArn": {"Value": "arn:aws:states:us-east-1:123456789012:stateMachine:x"}},
    }
    name = f"cubeless-{time.monotonic_ns()}"
    client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))
    out = stack_outputs(name, cfn=client("cloudformation"))
    assert out["StateMachineArn"].endswith(":stateMachine:x") and out["QueueUrl"].startswith("http")
    assert Pipeline.from_stack(name, cfn=client("cloudformation")).arn == out["StateMachineArn"]
    with pytest.raises(UserError, match="stack 'nope' is not deployed"):
        stack_outputs("nope", cfn=client("cloudformation"))


def test_run_request_payload_is_the_execution_input() -> None:
    req = RunRequest(spec=parse_spec(spec_doc("s3://cubes/vt.zarr")), as_of=datetime(2024, 3, 3, tzinfo=timezone.utc))
    assert parse_request(req.payload()).spec.end == date(2020, 2, 29)
