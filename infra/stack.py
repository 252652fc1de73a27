"""The cubeless stack: storage, task queue, functions, state machine, schedules, monitoring, tiles."""

from __future__ import annotations

from aws_cdk import App, CfnOutput, Duration, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from cubeless.aws import TILES_FUNCTION_OUTPUT, TILES_URL_OUTPUT

from .functions import WORKER_TIMEOUT, Functions
from .monitoring import Monitoring
from .schedules import Schedules
from .settings import Settings
from .storage import Storage
from .task_queue import TaskQueue
from .tiles import Tiles
from .workflow import Workflow


class CubelessStack(Stack):
    """Everything a deployment needs; its outputs are what ``cubeless.aws`` reads."""

    def __init__(self, scope: Construct, id: str, *, settings: Settings, layer_zip: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(scope, id, description="cubeless: cloud-free monthly median Sentinel-2 datacubes", **kwargs)
        self.settings = settings
        self.storage = Storage(self, "Storage", bucket_name=settings.bucket_name, retain=settings.retain_bucket)
        self.tasks = TaskQueue(self, "Tasks", worker_timeout=WORKER_TIMEOUT)
        self.functions = Functions(
            self,
            "Functions",
            settings=settings,
            layer_zip=layer_zip,
            bucket=self.storage.bucket,
            queue=self.tasks.queue,
            dead_letter_queue=self.tasks.dead_letter_queue,
            spill_uri=self.storage.spill_uri,
        )
        self.workflow = Workflow(
            self,
            "Workflow",
            planner=self.functions.planner,
            worker=self.functions.worker,
            commit=self.functions.commit,
            progress=self.functions.progress,
            max_lanes=settings.max_lanes,
            tolerated_failure_percentage=settings.tolerated_failure_percentage,
            log_retention_days=settings.log_retention_days,
            run_timeout=Duration.hours(settings.run_timeout_hours),
        )
        self.schedules = Schedules(
            self, "Schedules", settings=settings.schedules, state_machine=self.workflow.state_machine, bucket=self.storage.bucket
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            worker=self.functions.worker,
            state_machine=self.workflow.state_machine,
            queue=self.tasks.queue,
            dead_letter_queue=self.tasks.dead_letter_queue,
            alarm_topic_arn=settings.alarm_topic_arn,
        )
        self.tiles = Tiles(self, "Tiles", settings=settings, bucket=self.storage.bucket)
        CfnOutput(self, "StateMachineArn", value=self.workflow.state_machine.state_machine_arn, description="Start runs here")
        CfnOutput(self, "BucketName", value=self.storage.bucket.bucket_name, description="Cube stores: s3://<bucket>/<name>.zarr")
        CfnOutput(self, "QueueUrl", value=self.tasks.queue.queue_url)
        CfnOutput(self, "DeadLetterQueueUrl", value=self.tasks.dead_letter_queue.queue_url)
        CfnOutput(self, "DashboardName", value=self.monitoring.dashboard.dashboard_name)
        CfnOutput(self, TILES_URL_OUTPUT, value=self.tiles.url.url,
                  description="The map of the bucket's cubes: `cubeless view` (signed) or, with tiles_public, this URL")
        CfnOutput(self, TILES_FUNCTION_OUTPUT, value=self.tiles.function.function_arn,
                  description="Viewers need lambda:InvokeFunctionUrl and lambda:InvokeFunction on this function (unless tiles_public)")


def add_checks(app: App) -> None:
    """Run cdk-nag's AWS Solutions checks at synth: an unacknowledged finding stops the synth.

    Acknowledged findings and their reasons are also written to each resource's template metadata.
    """
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))


def build(app: App, settings: Settings, *, layer_zip: str) -> CubelessStack:
    """The stack in ``app``, with the cdk-nag checks."""
    stack = CubelessStack(app, settings.stack_name, settings=settings, layer_zip=layer_zip, stack_name=settings.stack_name)
    add_checks(app)
    return stack
