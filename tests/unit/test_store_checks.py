"""fs.check_writable: a store that cannot be written is refused in one line before anything runs."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from cubeless.errors import UserError
from cubeless.fs import check_writable, storage_problem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_writable_local_store_passes_and_nothing_is_left(tmp_path: Path) -> None:
    check_writable(str(tmp_path / "new" / "cube.zarr"))
    (tmp_path / "cube.zarr").mkdir()
    check_writable(str(tmp_path / "cube.zarr"))
    assert sorted(os.listdir(tmp_path)) == ["cube.zarr"] and not os.listdir(tmp_path / "cube.zarr")


def test_unwritable_local_stores_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"store /proc/x.zarr is not writable \(.*in /proc\); choose a path"):
        check_writable("/proc/x.zarr")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="lies under .*/f, which is a file"):
        check_writable(str(tmp_path / "f" / "cube.zarr"))
    with pytest.raises(UserError, match="f is a file"):
        check_writable(str(tmp_path / "f"))


def test_storage_problem_names_the_cause() -> None:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, NoRegionError

    assert "no AWS credentials found" in (storage_problem(NoCredentialsError(), "s3://b/c") or "")
    assert "is unreachable" in (storage_problem(EndpointConnectionError(endpoint_url="http://x"), "s3://b/c") or "")
    assert "no AWS region configured" in (storage_problem(NoRegionError()) or "")
    assert storage_problem(ValueError("unrelated")) is None


@pytest.fixture
def moto_env(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    yield port
    server.stop()


def test_s3_stores_are_checked_with_one_head(moto_env: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    fsys = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fsys.exists("checked"):
        fsys.mkdir("checked")
    check_writable("s3://checked/cube.zarr")
    with pytest.raises(UserError, match="bucket 'missing-bucket' does not exist; create it"):
        check_writable("s3://missing-bucket/cube.zarr")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(UserError, match=r"endpoint http://127.0.0.1:\d+ is unreachable"):
        check_writable("s3://checked/cube.zarr")
