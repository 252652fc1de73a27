"""Schedules: EventBridge Scheduler schedules that start the state machine with a spec."""

from __future__ import annotations

from aws_cdk import TimeZone
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from .settings import BUCKET_PLACEHOLDER, ScheduleSettings

#: Replaced by EventBridge Scheduler with the time the schedule fired.
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"


def schedule_input(s: ScheduleSettings, bucket_name: str) -> dict:
    """The execution input a schedule sends: the spec and, for complete bins only, the firing time."""
    spec = dict(s.spec)
    if isinstance(spec.get("store"), str):
        spec["store"] = spec["store"].replace(BUCKET_PLACEHOLDER, bucket_name)
    payload: dict = {"spec": spec}
    if s.lanes:
        payload["lanes"] = s.lanes
    if s.complete_bins_only:
        payload["as_of"] = SCHEDULED_TIME
    return payload


class Schedules(Construct):
    """One schedule per setting.

    :ivar schedules: name -> schedule.
    """

    def __init__(
        self, scope: Construct, id: str, *, settings: tuple[ScheduleSettings, ...], state_machine: sfn.IStateMachine, bucket: s3.IBucket
    ) -> None:
        super().__init__(scope, id)
        self.schedules: dict[str, scheduler.Schedule] = {}
        for s in settings:
            self.schedules[s.name] = scheduler.Schedule(
                self,
                s.name,
                schedule=scheduler.ScheduleExpression.expression(s.expression, TimeZone.of(s.timezone)),
                target=targets.StepFunctionsStartExecution(
                    state_machine,
                    input=scheduler.ScheduleTargetInput.from_object(schedule_input(s, bucket.bucket_name)),
                    retry_attempts=3,
                ),
                enabled=s.enabled,
                description=s.description or f"cubeless: run {s.spec.get('name')} on {s.expression}",
            )
