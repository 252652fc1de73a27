"""Functions: the planner and commit (zip + the cubeless layer) and the worker (container image).

Each function has its own role and log group; grants are the narrowest the services offer.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cubeless.aws import ENV

from .nag import acknowledge, acknowledge_resource
from .settings import Settings

ROOT = Path(__file__).resolve().parent.parent
#: The worker's deadline; the Step Functions task timeout and the queue's visibility follow it.
WORKER_TIMEOUT = Duration.seconds(90)
#: Only the handlers go into the zip functions' code; cubeless and its dependencies are the layer.
_HANDLER_ASSET_EXCLUDE = ["*", ".*", "!lambdas", "!lambdas/*.py", "**/__pycache__"]


def image_code(architecture: str, *, cmd: list[str] | None = None) -> lambda_.DockerImageCode:
    """The worker image (``containers/worker/Dockerfile``), with another handler as ``cmd``.

    Staged at synth (the build context is the repo root, filtered by .dockerignore); built by
    `cdk deploy`, never by synth or the tests. Every function of one image shares its asset.
    """
    platform = ecr_assets.Platform.LINUX_ARM64 if architecture == "arm64" else ecr_assets.Platform.LINUX_AMD64
    return lambda_.DockerImageCode.from_image_asset(str(ROOT), file="containers/worker/Dockerfile", platform=platform, cmd=cmd)


def function_basics(scope: Construct, name: str, log_retention_days: int) -> dict:
    """Role, log group and tracing of one function (its own role, no managed policies)."""
    role = iam.Role(scope, f"{name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    log_group = logs.LogGroup(scope, f"{name}Logs", removal_policy=RemovalPolicy.DESTROY)
    log_group.node.default_child.retention_in_days = log_retention_days  # type: ignore[union-attr]
    log_group.grant_write(role)
    return {"role": role, "log_group": log_group, "tracing": lambda_.Tracing.ACTIVE}


class Functions(Construct):
    """The three Lambda functions of a run.

    :ivar planner: plans a run and enqueues its tasks (zip, layer).
    :ivar worker: executes tasks from the queue for ~75 s per invocation (container image).
    :ivar commit: publishes a finished run (zip, layer).
    :ivar progress: a run's exact progress from its done/ and dead/ markers, once per round (zip, layer).
    :ivar layer: cubeless and its runtime dependencies, for the zip functions.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        layer_zip: str,
        bucket: s3.IBucket,
        queue: sqs.IQueue,
        dead_letter_queue: sqs.IQueue,
        spill_uri: str,
    ) -> None:
        super().__init__(scope, id)
        self._settings = settings
        arm = settings.architecture == "arm64"
        self._arch = lambda_.Architecture.ARM_64 if arm else lambda_.Architecture.X86_64
        self._env = {
            ENV["bucket"]: bucket.bucket_name,
            ENV["queue_url"]: queue.queue_url,
            ENV["dead_letter_queue_url"]: dead_letter_queue.queue_url,
            ENV["spill_uri"]: spill_uri,
            ENV["lanes"]: str(settings.lanes),
            ENV["max_lanes"]: str(settings.max_lanes),
            ENV["allowed_hosts"]: ",".join(settings.stac_hosts),
            ENV["run_timeout"]: str(settings.run_timeout_hours * 3600),
            "POWERTOOLS_METRICS_NAMESPACE": "cubeless",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            code=lambda_.Code.from_asset(layer_zip),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
            compatible_architectures=[self._arch],
            description="cubeless and its runtime dependencies (layers/build.py)",
        )
        handlers = lambda_.Code.from_asset(str(ROOT), exclude=_HANDLER_ASSET_EXCLUDE)
        # 15 min, Lambda's most: the Brazil-year plan took 39 s here at 30 m and 63 s at 10 m (bench
        # 4d/4g); the real API's page latency (1-3 s x ~360 pages / 8 partitions in flight) adds ~1-2 min.
        self.planner = self._zip_function(
            "Planner", handlers, "lambdas.planner.handler", settings.planner_memory_mb, Duration.minutes(15)
        )
        # 10 min: merging 100,000 Icechunk forks took 3.5 s of CPU here (bench 9c; ~6 s at the 0.58 vCPU
        # of 1,024 MB); on S3 the commit adds reading those 100,000 forks (batches of 2,000 fetched
        # concurrently) and listing 100,000 done markers (10,000 took 2.8 s on moto, bench 5b): an
        # estimated 1-2 minutes in all, so about 5x headroom.
        self.commit = self._zip_function("Commit", handlers, "lambdas.commit.handler", settings.commit_memory_mb, Duration.minutes(10))
        # One round of the run's loop: two listings (done/, dead/) of up to a million markers.
        self.progress = self._zip_function("Progress", handlers, "lambdas.progress.handler", settings.commit_memory_mb, Duration.minutes(10))
        self.worker = lambda_.DockerImageFunction(
            self,
            "Worker",
            code=image_code(settings.architecture),
            architecture=self._arch,
            memory_size=settings.worker_memory_mb,
            ephemeral_storage_size=Size.mebibytes(settings.worker_ephemeral_mb),
            timeout=WORKER_TIMEOUT,
            environment={**self._env, **settings.gdal_env, "POWERTOOLS_SERVICE_NAME": "worker"},
            description="cubeless worker: executes tasks from the queue for up to ~75 s per invocation",
            **self._common("Worker"),
        )
        objects = bucket.arn_for_objects("*")
        for fn in (self.planner, self.worker, self.commit, self.progress):
            # Cube stores (and spilled task bodies) are prefixes of this one bucket: object actions
            # plus listing, nothing on the bucket's settings.
            iam.Grant.add_to_principal(
                grantee=fn,
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                resource_arns=[objects],
            )
            iam.Grant.add_to_principal(grantee=fn, actions=["s3:ListBucket"], resource_arns=[bucket.bucket_arn])
            assert fn.role is not None
            acknowledge_resource(fn.role, objects, "Cube stores are prefixes chosen per spec in the stack's one bucket; object actions only.")
            acknowledge(fn.role, "AwsSolutions-IAM5[Resource::*]", "X-Ray tracing (PutTraceSegments, PutTelemetryRecords) has no resource-level permissions.")
        queue.grant_send_messages(self.planner)
        queue.grant_consume_messages(self.worker)
        # A task's failed last try: its message goes to the dead-letter queue at once.
        dead_letter_queue.grant_send_messages(self.worker)
        queue.grant(self.commit, "sqs:GetQueueAttributes")
        queue.grant(self.progress, "sqs:GetQueueAttributes")

    def _common(self, name: str) -> dict:
        return function_basics(self, name, self._settings.log_retention_days)

    def _zip_function(self, name: str, code: lambda_.Code, handler: str, memory: int, timeout: Duration) -> lambda_.Function:
        fn = lambda_.Function(
            self,
            name,
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=self._arch,
            code=code,
            handler=handler,
            layers=[self.layer],
            memory_size=memory,
            timeout=timeout,
            environment={**self._env, "POWERTOOLS_SERVICE_NAME": name.lower()},
            description=f"cubeless {name.lower()}",
            **self._common(name),
        )
        acknowledge(fn, "AwsSolutions-L1", "python3.12 on purpose: the layer, the worker image and the venv are all built for it.")
        return fn
