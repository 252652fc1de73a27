"""The state machine of a run: Plan -> lanes (Distributed Map of worker loops) -> Commit.

::

    Plan ──> Anything to do? ──no──> Up to date
                 │yes
                 v
    Lanes (Distributed Map over the planner's ``lanes``; one child execution per lane)
    │   Work (worker: one task) ──> Drained? ──yes──> Lane done
    │     ^                            │idle: tasks in flight elsewhere
    │     └──────────── Wait ──────────┘ (or straight back when it did a task)
    v
    Commit ──(TasksPending: retry with backoff)
       │ complete                    │ RunIncomplete, SpecError, PlanError
       v                             v
    Committed                      Explain (the error's one-line message) ──> Failed

Every task state has its own Retry; nothing is string-built JSON.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from .functions import WORKER_TIMEOUT
from .nag import acknowledge, acknowledge_resource, flatten

#: Lambda's own transient errors: always worth another try.
LAMBDA_TRANSIENT = [
    "Lambda.TooManyRequestsException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
]
#: Errors whose message is one line meant for the user: the execution fails with it as its cause.
USER_FACING = ["SpecError", "PlanError", "ConfigError"]
#: How long an idle lane waits before asking the queue again.
IDLE_WAIT = Duration.seconds(20)


class Workflow(Construct):
    """The Standard state machine that runs a cube.

    :ivar state_machine: the state machine (start it with the spec as input).
    :ivar log_group: its execution log (level ALL).
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        planner: lambda_.IFunction,
        worker: lambda_.IFunction,
        commit: lambda_.IFunction,
        max_lanes: int,
        tolerated_failure_percentage: float,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, id)

        explain = sfn.Pass(
            self,
            "Explain",
            comment="Keep the error's one-line message as the cause (not Lambda's JSON with a stack trace).",
            parameters={"error.$": "$.error.Error", "cause.$": "States.StringToJson($.error.Cause)"},
        )
        failed = sfn.Fail(self, "Failed", error_path="$.error", cause_path="$.cause.errorMessage")
        explain.next(failed)

        plan = tasks.LambdaInvoke(
            self,
            "Plan",
            lambda_function=planner,
            payload_response_only=True,
            retry_on_service_exceptions=False,
            comment="Validate the spec, plan or resume the run, enqueue its tasks; returns the run record and lanes.",
        )
        plan.add_retry(errors=LAMBDA_TRANSIENT, max_attempts=3, interval=Duration.seconds(2), backoff_rate=2, jitter_strategy=sfn.JitterType.FULL)
        plan.add_catch(explain, errors=USER_FACING, result_path="$.error")

        # -- one lane: invoke the worker until the queue is drained --------------------------------
        work = tasks.LambdaInvoke(
            self,
            "Work",
            lambda_function=worker,
            payload=sfn.TaskInput.from_object({"lane.$": "$.lane", "run_id.$": "$.run_id"}),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            task_timeout=sfn.Timeout.duration(WORKER_TIMEOUT),
            result_path="$.work",
            comment="One task from the queue; a failed task raises and is retried here and redelivered by SQS.",
        )
        work.add_retry(
            errors=LAMBDA_TRANSIENT + ["States.Timeout", "States.TaskFailed"],
            max_attempts=5,
            interval=Duration.seconds(2),
            backoff_rate=2,
            max_delay=Duration.seconds(60),
            jitter_strategy=sfn.JitterType.FULL,
        )
        idle = sfn.Wait(self, "Idle", time=sfn.WaitTime.duration(IDLE_WAIT), comment="Tasks are in flight in other lanes; ask again soon.")
        lane = work.next(
            sfn.Choice(self, "Drained?")
            .when(sfn.Condition.boolean_equals("$.work.drained", True), sfn.Succeed(self, "Lane done"))
            .when(sfn.Condition.boolean_equals("$.work.idle", True), idle.next(work))
            .otherwise(work)
        )
        lanes = sfn.DistributedMap(
            self,
            "Lanes",
            items_path="$.lanes",
            item_selector={"lane.$": "$$.Map.Item.Value", "run_id.$": "$.run.run_id"},
            max_concurrency=max_lanes,
            tolerated_failure_percentage=float(tolerated_failure_percentage),
            map_execution_type=sfn.StateMachineType.STANDARD,
            result_path=sfn.JsonPath.DISCARD,
            label="lanes",
            comment="Each lane is a worker loop; the commit step judges whether every task got done.",
        )
        lanes.item_processor(lane)

        commit_task = tasks.LambdaInvoke(
            self,
            "Commit",
            lambda_function=commit,
            payload=sfn.TaskInput.from_object({"run.$": "$.run", "spec.$": "$.spec"}),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            result_path="$.manifest",
            comment="Publish the run's bins once every task is done; TasksPending while some are in flight.",
        )
        commit_task.add_retry(
            errors=["TasksPending"],
            max_attempts=8,
            interval=Duration.seconds(30),
            backoff_rate=2,
            max_delay=Duration.minutes(5),
            jitter_strategy=sfn.JitterType.FULL,
        )
        commit_task.add_retry(errors=LAMBDA_TRANSIENT, max_attempts=3, interval=Duration.seconds(2), backoff_rate=2, jitter_strategy=sfn.JitterType.FULL)
        commit_task.add_catch(explain, errors=["RunIncomplete", "TasksPending"], result_path="$.error")

        definition = plan.next(
            sfn.Choice(self, "Anything to do?")
            .when(sfn.Condition.is_null("$.run"), sfn.Succeed(self, "Up to date", comment="Every bin of the spec is committed."))
            .otherwise(lanes.next(commit_task).next(sfn.Succeed(self, "Committed")))
        )

        self.log_group = logs.LogGroup(
            self,
            "Logs",
            # Step Functions logs to /aws/vendedlogs/ without growing the account's log resource policy.
            log_group_name=f"/aws/vendedlogs/states/{Stack.of(self).stack_name}-runs",
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.log_group.node.default_child.retention_in_days = log_retention_days  # type: ignore[union-attr]
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            comment="cubeless: plan a run, drain its tasks in parallel lanes, commit",
        )
        role = self.state_machine.role
        for fn in (planner, worker, commit):
            acknowledge_resource(role, f"{fn.function_arn}:*", "Invoking this one function, any version or alias (how CDK grants LambdaInvoke).")
        map_policy = self.state_machine.node.try_find_child("DistributedMapPolicy")
        if map_policy is not None:  # lets the Map start, watch and stop its own child executions
            for statement in Stack.of(self).resolve(map_policy.document)["Statement"]:
                for resource in _as_list(statement.get("Resource")):
                    if ":execution:" in flatten(self, resource):
                        acknowledge_resource(
                            map_policy, resource, "The Distributed Map's own child executions (names are generated per map run)."
                        )
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "Log delivery (logs:*LogDelivery*, DescribeLogGroups, resource policies) and X-Ray have no resource-level permissions.",
        )


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]
