"""End to end on emulated AWS: the synthesized state machine on moto, the real handlers, S3 scenes.

See ``aws_harness.py`` for what is real and what is emulated. The cube the pipeline builds must
equal the local runner's cube of the same spec exactly.
"""

from __future__ import annotations

import pytest

from cubeless.aws import Deployment


def test_the_worker_reads_s3_scenes_in_its_own_bucket_only() -> None:
    d = Deployment(bucket="cubes", queue_url="q", spill_uri="s3://cubes/_q", allowed_hosts=("sentinel-cogs.s3.us-west-2.amazonaws.com",))
    policy = d.href_policy()
    assert policy.allows("s3://cubes/scenes/S2A_1/B04.tif")
    assert policy.allows("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B04.tif")
    for href in ("s3://other-bucket/B04.tif", "s3://cubes-evil/B04.tif", "https://evil.example.com/B04.tif", "/etc/passwd", "file:///etc/passwd"):
        assert not policy.allows(href), href


def test_the_retry_delay_of_a_failed_task_comes_from_the_environment() -> None:
    from cubeless.aws import ConfigError

    base = {"CUBELESS_BUCKET": "b", "CUBELESS_QUEUE_URL": "q", "CUBELESS_SPILL_URI": "s3://b/_q"}
    assert [Deployment.from_env(base).retry_delay_for(n) for n in range(1, 6)] == [10, 20, 40, 80, 160]  # production
    fast = Deployment.from_env({**base, "CUBELESS_RETRY_DELAY": "0.5"})
    assert [fast.retry_delay_for(n) for n in range(1, 6)] == [0, 1, 2, 4, 8]
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ConfigError, match="CUBELESS_RETRY_DELAY is"):
            Deployment.from_env({**base, "CUBELESS_RETRY_DELAY": bad})


def test_the_last_try_of_a_task_comes_back_at_once_to_be_dead_lettered(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "handlers"))
    from aws_helpers import Run, spec_doc

    from cubeless.aws import Received, TaskQueue
    from cubeless.spec import parse_spec
    from lambdas import worker

    class Sqs:
        def __init__(self) -> None:
            self.visibility: list[int] = []
            self.attribute_reads = 0

        def get_queue_attributes(self, QueueUrl, AttributeNames):  # noqa: ANN001, ANN202, N803
            self.attribute_reads += 1
            return {"Attributes": {"RedrivePolicy": json.dumps({"deadLetterTargetArn": "arn:dlq", "maxReceiveCount": "6"})}}

        def change_message_visibility(self, QueueUrl, ReceiptHandle, VisibilityTimeout):  # noqa: ANN001, ANN202, N803
            self.visibility.append(VisibilityTimeout)

    sqs = Sqs()
    queue = TaskQueue("https://sqs.example/q", sqs=sqs)
    run = Run(parse_spec(spec_doc(str(tmp_path / "hx.zarr"))))
    monkeypatch.setattr(worker, "queue", lambda: queue)
    monkeypatch.setattr(worker, "deployment", lambda: Deployment(bucket="b", queue_url=queue.url, spill_uri="s3://b/_q"))
    for n in range(1, 7):
        worker.record_failure(Received(run.tasks[0], f"r{n}", n, "m"), RuntimeError("corrupt COG"), 0.1)
    assert sqs.visibility == [10, 20, 40, 80, 160, 0]  # the 6th (last) try: no 320 s wait before the DLQ
    assert sqs.attribute_reads == 1
    assert run.state.failures()[run.tasks[0].task_id].attempts == 6
    assert TaskQueue("https://sqs.example/q", sqs=type("NoDlq", (), {"get_queue_attributes": lambda *a, **k: {"Attributes": {}}})()).max_receives() is None


def test_a_failed_try_drops_gdals_network_cache(tmp_path) -> None:  # noqa: ANN001
    """GDAL caches /vsicurl/ (and /vsis3/) objects process-wide: without the worker's
    ``forget_network_cache`` a warm container keeps failing on an object that was fixed."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np
    import rasterio
    from rasterio.errors import RasterioIOError

    from cubeless.demo.synthetic import write_cog
    from lambdas import worker

    served = tmp_path / "www"
    served.mkdir()
    write_cog(tmp_path / "good.tif", np.full((64, 64), 7, np.uint16), crs="EPSG:32632", transform=(10.0, 0, 500000.0, 0, -10.0, 5000000.0))
    good = (tmp_path / "good.tif").read_bytes()
    (served / "scene.tif").write_bytes(b"this is not a GeoTIFF\n" * (len(good) // 22 + 1))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"/vsicurl/http://127.0.0.1:{server.server_address[1]}/scene.tif"
    try:
        with rasterio.Env(CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            with pytest.raises(RasterioIOError):
                rasterio.open(url)
            (served / "scene.tif").write_bytes(good)  # the object is fixed
            with pytest.raises(RasterioIOError):
                rasterio.open(url)  # ... but this process still sees the cached bytes
            worker.forget_network_cache()
            with rasterio.open(url) as src:
                assert int(src.read(1).max()) == 7
    finally:
        server.shutdown()
        server.server_close()
