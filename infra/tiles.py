"""Tiles: the web map, XYZ tiles, TileJSON and points of the bucket's cubes, behind a Function URL.

The function answers what ``cubeless serve`` answers (``lambdas/tiles.py`` calls the same
``cubeless.serve.respond``). It runs the worker's image with another handler: rio-tiler reads and
renders through rasterio (GDAL, ~120 MiB), which does not fit beside the planner/commit layer
(~236 of Lambda's 250 MiB for a zip function and its layers); the image is built once for both.

Private by default: the Function URL's AuthType is AWS_IAM and ``cubeless view`` signs requests
with the viewer's credentials. ``tiles_public`` makes it AuthType NONE (see its trade-off in
``infra/settings.py``). The role reads the bucket and nothing else.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cubeless.aws import ENV

from .functions import function_basics, image_code
from .nag import acknowledge, acknowledge_resource
from .settings import Settings

#: A tile reads a few chunks per band; a cold start imports xarray, zarr and rio-tiler (~5 s).
TILES_TIMEOUT = Duration.seconds(30)


class Tiles(Construct):
    """The tile function and its URL.

    :ivar function: the function (the worker image, handler ``lambdas.tiles.handler``).
    :ivar url: its Function URL (AuthType AWS_IAM unless ``tiles_public``).
    """

    def __init__(self, scope: Construct, id: str, *, settings: Settings, bucket: s3.IBucket) -> None:
        super().__init__(scope, id)
        arm = settings.architecture == "arm64"
        self.function = lambda_.DockerImageFunction(
            self,
            "Function",
            code=image_code(settings.architecture, cmd=["lambdas.tiles.handler"]),
            architecture=lambda_.Architecture.ARM_64 if arm else lambda_.Architecture.X86_64,
            memory_size=settings.tiles_memory_mb,
            timeout=TILES_TIMEOUT,
            reserved_concurrent_executions=settings.tiles_max_concurrency,
            environment={ENV["bucket"]: bucket.bucket_name, "POWERTOOLS_SERVICE_NAME": "tiles", "POWERTOOLS_LOG_LEVEL": "INFO"},
            description="cubeless tiles: the map, tiles, TileJSON and points of the bucket's cubes (read-only)",
            **function_basics(self, "Function", settings.log_retention_days),
        )
        # Read-only: object reads and listing (the catalog finds cubes by listing the bucket).
        objects = bucket.arn_for_objects("*")
        iam.Grant.add_to_principal(grantee=self.function, actions=["s3:GetObject"], resource_arns=[objects])
        iam.Grant.add_to_principal(grantee=self.function, actions=["s3:ListBucket"], resource_arns=[bucket.bucket_arn])
        role = self.function.role
        assert role is not None
        acknowledge_resource(role, objects, "The map reads any cube in the stack's one bucket (cubes are prefixes chosen per spec); GetObject only.")
        acknowledge(role, "AwsSolutions-IAM5[Resource::*]", "X-Ray tracing (PutTraceSegments, PutTelemetryRecords) has no resource-level permissions.")
        auth = lambda_.FunctionUrlAuthType.NONE if settings.tiles_public else lambda_.FunctionUrlAuthType.AWS_IAM
        self.url = self.function.add_function_url(auth_type=auth)
