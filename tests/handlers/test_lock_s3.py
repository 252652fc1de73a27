"""The cube lock on S3 (moto server, s3fs): conditional writes, not check-then-act.

Taking it is ``If-None-Match: *``; renewing it and taking over a stale one is ``If-Match`` on the
ETag the writer last saw; releasing is a delete with ``If-Match``. moto 5.2.5 enforces all three
(412 PreconditionFailed), checked first here so that the lock tests cannot pass on an emulator
that ignores the conditions.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from aws_helpers import BUCKET, Queues, StateMachine, client

from cubeless import fs
from cubeless.aws import Deployment
from cubeless.state import LOCK_KEY, CubeLock, CubeLocked


def test_the_emulator_enforces_s3_conditions(queues: Queues) -> None:
    s3 = client("s3")
    etag = s3.put_object(Bucket=BUCKET, Key="cond/k", Body=b"1", IfNoneMatch="*")["ETag"]
    for kw in ({"IfNoneMatch": "*"}, {"IfMatch": '"stale"'}):
        with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
            s3.put_object(Bucket=BUCKET, Key="cond/k", Body=b"2", **kw)
    s3.put_object(Bucket=BUCKET, Key="cond/k", Body=b"3", IfMatch=etag)
    with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
        s3.delete_object(Bucket=BUCKET, Key="cond/k", IfMatch=etag)  # changed since


def test_lock_on_s3_one_winner_renewal_takeover_and_release(queues: Queues) -> None:
    store = f"s3://{BUCKET}/locks/cube.zarr"
    uri = fs.join(store, LOCK_KEY)
    # Eight contenders at once: exactly one takes it.
    won: list[CubeLock] = []
    refused: list[str] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        try:
            won.append(CubeLock(store, stale_after=300).acquire(f"cube-{i:012d}"))
        except CubeLocked as err:
            refused.append(str(err))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    holder = won[0]
    assert all(f"run id {holder.record['run_id']}" in r for r in refused)

    # A stale lock (heartbeat stopped an hour ago) is taken over; its old holder can neither
    # renew nor delete it afterwards (its ETag no longer matches).
    old = json.loads(fs.get_bytes(uri))
    old["heartbeat"] = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    old["host"] = "elsewhere"
    s3 = client("s3")
    s3.put_object(Bucket=BUCKET, Key="locks/cube.zarr/" + LOCK_KEY, Body=json.dumps(old).encode(), IfMatch=holder._etag)
    new = CubeLock(store, stale_after=300).acquire("cube-newnewnewnew")
    assert json.loads(fs.get_bytes(uri))["run_id"] == "cube-newnewnewnew"
    assert holder._put_remote({**holder.record, "heartbeat": "now"}, IfMatch=holder._etag) is None  # renewal refused
    holder.release()  # a conditional delete with the old ETag: refused, the new holder keeps its lock
    assert json.loads(fs.get_bytes(uri))["run_id"] == "cube-newnewnewnew"
    with pytest.raises(CubeLocked, match="cube-newnewnewnew"):
        CubeLock(store).acquire("cube-third0000000")
    new.release()
    assert not fs.exists(uri)
    CubeLock(store).acquire("cube-fourth000000").release()  # free again


def test_the_heartbeat_renews_with_if_match(queues: Queues) -> None:
    store = f"s3://{BUCKET}/locks/beat.zarr"
    uri = fs.join(store, LOCK_KEY)
    with CubeLock(store, stale_after=10).acquire("cube-aaaaaaaaaaaa") as lock:  # beats every 1 s
        first, etag = json.loads(fs.get_bytes(uri))["heartbeat"], lock._etag
        deadline = datetime.now(timezone.utc) + timedelta(seconds=15)
        while lock._etag == etag and datetime.now(timezone.utc) < deadline:
            threading.Event().wait(0.2)
        assert lock._etag != etag and json.loads(fs.get_bytes(uri))["heartbeat"] >= first
    assert not fs.exists(uri)


# -- an execution's lock (AWS: held by a Step Functions execution, no heartbeat) ---------------------


def test_an_executions_lock_is_refused_to_another_until_its_execution_ends(queues: Queues, state_machine: StateMachine) -> None:
    store = f"s3://{BUCKET}/locks/{uuid.uuid4().hex[:8]}.zarr"
    uri = fs.join(store, LOCK_KEY)
    deployment = Deployment(bucket=BUCKET, queue_url=queues.url, spill_uri=f"s3://{BUCKET}/_queue", run_timeout=3600)
    first, second = state_machine.start(), state_machine.start()
    lock = deployment.cube_lock(store, first).acquire("cube-aaaaaaaaaaaa")
    record = json.loads(fs.get_bytes(uri))
    assert (record["run_id"], record["execution"]) == ("cube-aaaaaaaaaaaa", first) and "heartbeat" not in record
    assert lock._thread is None  # no heartbeat thread: the lock outlives this invocation
    started, expires = datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["expires"])
    assert expires - started == timedelta(hours=1)
    with pytest.raises(CubeLocked) as err:
        deployment.cube_lock(store, second).acquire("cube-bbbbbbbbbbbb")
    assert f"run id cube-aaaaaaaaaaaa, started {record['started']}, execution {first}" in str(err.value)
    assert "\n" not in str(err.value)
    # A local run (heartbeat mode, no way to ask Step Functions) waits for the expiry, not 300 s.
    with pytest.raises(CubeLocked, match=first):
        CubeLock(store, stale_after=0).acquire("cube-cccccccccccc")
    assert json.loads(fs.get_bytes(uri)) == record
    # The execution ended (here: stopped): its lock is stale and the next execution takes it over.
    state_machine.stop(first)
    taken = deployment.cube_lock(store, second).acquire("cube-bbbbbbbbbbbb")
    assert json.loads(fs.get_bytes(uri))["execution"] == second
    assert deployment.cube_lock(store, first).release() is False  # the old holder's release leaves it alone
    assert json.loads(fs.get_bytes(uri))["execution"] == second
    assert taken.release() is True and not fs.exists(uri)


def test_an_executions_lock_is_taken_again_by_the_same_execution_and_released_by_any_of_its_invocations(
    queues: Queues, state_machine: StateMachine
) -> None:
    store = f"s3://{BUCKET}/locks/{uuid.uuid4().hex[:8]}.zarr"
    uri = fs.join(store, LOCK_KEY)
    deployment = Deployment(bucket=BUCKET, queue_url=queues.url, spill_uri=f"s3://{BUCKET}/_queue")
    ours = state_machine.start()
    deployment.cube_lock(store, ours).acquire("cube-aaaaaaaaaaaa")  # the planner's invocation ends, the lock stays
    record = json.loads(fs.get_bytes(uri))
    again = deployment.cube_lock(store, ours).acquire("cube-aaaaaaaaaaaa")  # a retried planner, the commit
    assert again.held and json.loads(fs.get_bytes(uri)) == record  # the same lock, not a new one
    assert deployment.cube_lock(store, ours).release() is True and not fs.exists(uri)  # the release step
    assert deployment.cube_lock(store, ours).release() is False  # twice: harmless
    # An execution that does not exist (or no longer does) holds nothing.
    deployment.cube_lock(store, state_machine.never_started()).acquire("cube-gone00000000")
    deployment.cube_lock(store, ours).acquire("cube-bbbbbbbbbbbb").release()
    assert not fs.exists(uri)


def test_an_expired_executions_lock_is_stale_whatever_the_execution_says(queues: Queues, state_machine: StateMachine) -> None:
    store = f"s3://{BUCKET}/locks/{uuid.uuid4().hex[:8]}.zarr"
    uri = fs.join(store, LOCK_KEY)
    deployment = Deployment(bucket=BUCKET, queue_url=queues.url, spill_uri=f"s3://{BUCKET}/_queue")
    first, second = state_machine.start(), state_machine.start()
    deployment.cube_lock(store, first).acquire("cube-aaaaaaaaaaaa")
    record = json.loads(fs.get_bytes(uri))
    record["expires"] = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()  # past the state machine's timeout
    client("s3").put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"), Body=json.dumps(record).encode())
    CubeLock(store).acquire("cube-local0000000").release()  # a local run sees it expired too
    assert not fs.exists(uri)
    with pytest.raises(ValueError, match="needs an object store"):
        CubeLock("./local.zarr", execution=second)
