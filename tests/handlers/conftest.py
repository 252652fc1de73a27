"""Fixtures for the handlers and cubeless.aws: one moto server (SQS, S3, Step Functions,
CloudFormation) per test process, a fresh queue pair per test, a small real cube, a fake context."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest
from aws_helpers import BUCKET, REGION, FakeContext, Queues, Run, StateMachine, new_queues, spec_doc
from moto.server import ThreadedMotoServer

from cubeless.aws import ENV
from cubeless.spec import parse_spec


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Powertools warns when an invocation emits no metric (an idle worker): expected here.
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS clients (boto3, and s3fs through botocore) talk to the moto server."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return moto_endpoint


@pytest.fixture
def queues(aws: str) -> Queues:
    return new_queues()


@pytest.fixture
def deployment_env(queues: Queues, monkeypatch: pytest.MonkeyPatch) -> Queues:
    """The variables the stack sets on every function; the handlers' cached settings are reset."""
    monkeypatch.setenv(ENV["bucket"], BUCKET)
    monkeypatch.setenv(ENV["queue_url"], queues.url)
    monkeypatch.setenv(ENV["dead_letter_queue_url"], queues.dlq_url)
    monkeypatch.setenv(ENV["spill_uri"], f"s3://{BUCKET}/_queue")
    monkeypatch.setenv(ENV["lanes"], "4")
    monkeypatch.setenv(ENV["max_lanes"], "8")
    monkeypatch.setenv(ENV["allowed_hosts"], "earth-search.aws.element84.com,sentinel-cogs.s3.us-west-2.amazonaws.com")
    from lambdas import env

    env.deployment.cache_clear()
    env.queue.cache_clear()
    return queues


@pytest.fixture
def state_machine(aws: str) -> StateMachine:
    """Executions that hold cube locks: RUNNING until stopped."""
    return StateMachine()


@pytest.fixture
def context() -> FakeContext:
    return FakeContext()


@pytest.fixture
def run(tmp_path) -> Run:  # noqa: ANN001
    return Run(parse_spec(spec_doc(str(tmp_path / "hx.zarr"))))
