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
