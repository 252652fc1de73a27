"""Builders shared by the handler tests: a small real cube run, a fake Lambda context, clients."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import boto3
import numpy as np

from cubeless import store as S
from cubeless.aws import TaskQueue
from cubeless.grid import cube_geobox, grid_of, iter_tiles
from cubeless.models import RunRecord, Task, TaskResult, run_id_for
from cubeless.spec import CubeSpec
from cubeless.state import RunState
from cubeless.timebins import time_bins

REGION = "us-east-1"
BUCKET = "cubes-test"


def client(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


def new_queues() -> "Queues":
    """A fresh task queue with its dead-letter queue (max 6 receives), and the cube bucket."""
    sqs = client("sqs")
    name = f"tasks-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": "180", "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"6"}}'},
    )["QueueUrl"]
    s3 = client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return Queues(url, dlq)


@dataclass
class Queues:
    url: str
    dlq_url: str

    def queue(self, **kw: Any) -> TaskQueue:
        return TaskQueue(self.url, spill_uri=f"s3://{BUCKET}/_queue", **kw)


class StateMachine:
    """A state machine in moto whose executions stay RUNNING until stopped (moto runs no state
    here): the executions a cube lock names, as DescribeExecution reports them."""

    def __init__(self) -> None:
        self.sfn = client("stepfunctions")
        definition = {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}}
        self.arn = self.sfn.create_state_machine(
            name=f"runs-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/runs"
        )["stateMachineArn"]

    def start(self) -> str:
        """A new RUNNING execution's ARN."""
        return self.sfn.start_execution(stateMachineArn=self.arn, name=uuid.uuid4().hex, input="{}")["executionArn"]

    def stop(self, arn: str) -> None:
        self.sfn.stop_execution(executionArn=arn)
        assert self.sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"

    def never_started(self) -> str:
        """The ARN an execution of this state machine would have (DescribeExecution: does not exist)."""
        return self.arn.replace(":stateMachine:", ":execution:") + ":" + uuid.uuid4().hex


@dataclass
class FakeContext:
    """The attributes of a Lambda context that Powertools reads."""

    function_name: str = "cubeless-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:cubeless-test"
    memory_limit_in_mb: int = 2048
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/cubeless-test"
    log_stream_name: str = "2025/01/01/[$LATEST]0"

    def get_remaining_time_in_millis(self) -> int:
        return 90_000


def spec_doc(store: str, **kw: Any) -> dict[str, Any]:
    """A tiny cube (2 x 3 tiles of 64 px) over two months."""
    return {"name": "hx", "bbox": [10.0, 45.0, 10.05, 45.03], "resolution": 0.00027, "chunk": 64,
            "start": "2020-01-01", "end": "2020-02-29", "store": store, **kw}  # fmt: skip


class Run:
    """A planned run of a real (local) cube: cube created, task list and record written."""

    def __init__(self, spec: CubeSpec, max_tasks: int | None = None) -> None:
        self.spec = spec
        geobox = cube_geobox(spec)
        grid = grid_of(geobox, spec.crs)
        info = S.ensure_cube(spec, grid)
        bins = time_bins(spec.start, spec.end, spec.interval)
        self.run_id = run_id_for(spec, bins)
        self.state = RunState(spec.store, self.run_id)
        self.tasks = [
            Task(run_id=self.run_id, spec=spec, grid=grid, tile=tile, bin=b, t=S.time_index(info.origin, b, spec.interval),
                 items=[{"id": f"S2_{b.label}_{tile.iy}_{tile.ix}"}])
            for b in bins
            for tile in iter_tiles(geobox, spec.chunk)
        ][:max_tasks]  # fmt: skip
        self.state.write_tasks(self.tasks)
        self.record = RunRecord(
            run_id=self.run_id, cube=spec.name, store=spec.store, bins=bins, task_count=len(self.tasks),
            tiles_total=len(self.tasks), tiles_on_land=len(self.tasks), items_found=len(self.tasks),
            tasks_uri=self.state.tasks_uri, created=datetime.now(timezone.utc),
        )  # fmt: skip
        self.state.write_record(self.record)

    def commit_event(self) -> dict[str, Any]:
        """What the state machine hands the commit function (the planner's output)."""
        return {"run": self.record.model_dump(mode="json"), "lanes": [0], "spec": self.spec.model_dump(mode="json")}


def fake_execute(task: Task, *, policy: Any = None) -> TaskResult:
    """execute_task without the network: constant chunks through the real store, then the done marker."""
    arr = np.full((task.tile.ny, task.tile.nx), 100 * (task.t + 1), np.uint16)
    n = S.write_task(task, {b: arr for b in task.spec.bands}, np.full_like(arr, 3))
    result = TaskResult(task_id=task.task_id, status="done", seconds=0.01, chunks_written=n)
    RunState(task.spec.store, task.run_id).mark_done(result)
    return result
