"""Storage: the bucket cubes are written to (created, or an existing one the stack only grants on)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .nag import acknowledge

#: Key prefix of task bodies too big for an SQS message (see ``cubeless.aws``); expired after a week.
SPILL_PREFIX = "_queue"


class Storage(Construct):
    """The cube bucket.

    :ivar bucket: the bucket every function reads and writes cubes in.
    :ivar spill_uri: ``s3://<bucket>/_queue``, where oversized task messages are parked.
    """

    def __init__(self, scope: Construct, id: str, *, bucket_name: str | None, retain: bool = True) -> None:
        super().__init__(scope, id)
        if bucket_name:
            self.bucket: s3.IBucket = s3.Bucket.from_bucket_name(self, "Bucket", bucket_name)
        else:
            bucket = s3.Bucket(
                self,
                "Bucket",
                encryption=s3.BucketEncryption.S3_MANAGED,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                versioned=False,  # chunks are rewritten in place by design; versions would only cost
                removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
                auto_delete_objects=False,
                lifecycle_rules=[
                    s3.LifecycleRule(id="expire-spilled-tasks", prefix=f"{SPILL_PREFIX}/", expiration=Duration.days(7)),
                    s3.LifecycleRule(id="abort-multipart", abort_incomplete_multipart_upload_after=Duration.days(2)),
                ],
            )
            acknowledge(
                bucket,
                "AwsSolutions-S1",
                "Cube data bucket: access is by the stack's own roles only; server access logs would need a "
                "second bucket and log every chunk read. Use CloudTrail data events if an audit is required.",
            )
            self.bucket = bucket
        self.spill_uri = f"s3://{self.bucket.bucket_name}/{SPILL_PREFIX}"
