"""The state machine of a run: Plan -> rounds of worker lanes -> Progress -> Commit.

::

    Plan ──> Anything to do? ──no──> Up to date         Plan ── SpecError, PlanError, ConfigError,
                 │yes                                           CubeLocked ──> Explain ──> Failed
                 v                                                               ^
    ┌──> Workers (Distributed Map over progress.lanes; each lane a Standard child execution)
    │    │   Work (worker: tasks for ~75 s of its 90 s) ──> More? ──no (drained, or 10 calls)──> Lane done
    │    │     ^                                              │yes
    │    │     └──────────────────────────────────────────────┘
    │    v
    │  Progress (done/ + dead/ markers of THIS run vs its task count; next round's lanes)
    │    │                                    │ RunStalled
    │    v                                    v
    └─ Complete? ──no── Next round (Wait 10 s)    Release (the cube lock) ──> Explain ──> Failed
         │yes                                     ^
         v                                        │ RunIncomplete (dead-lettered tasks, named),
       Commit ────────────────────────────────────┘ TasksPending, CubeLocked
         │ (releases the cube lock)
         v
       Committed

One execution per cube at a time: the planner takes the cube's lock for this execution
(``$$.Execution.Id``) before it writes or queues anything, and the commit releases it. A second
execution of the same store fails in Plan with ``CubeLocked`` (its cause names the holder's run
id and execution) and leaves the lock alone. Every caught failure after the lock was taken goes
through Release (the commit function, ``action: release``: only a lock still naming this
execution is removed) before Explain, so the error and its cause are the original ones. An
uncaught failure (a Lambda error, the state machine's timeout) leaves the lock behind, and the
next execution takes it over: the holder's execution is no longer RUNNING (DescribeExecution).

No per-task loop in a Standard execution: a lane (child) makes at most ``MAX_CALLS_PER_LANE``
(10) worker calls, ~8 history events each; the parent writes ~16 events per round (a round
lasts up to ~15 min of work). A worker call takes many tasks and never raises for a failed one
(it is recorded and its message backs off); a Lambda service error is retried 5 times with
backoff and jitter, anything else ends the lane (caught), and the next round starts it again.
Every task state has its own Retry; nothing is string-built JSON.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
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
USER_FACING = ["SpecError", "PlanError", "ConfigError", "CubeLocked"]
#: The commit's errors that end the run (after the lock is released), each a one-line cause.
COMMIT_FAILURES = ["RunIncomplete", "TasksPending", "CubeLocked"]
#: Pause between rounds whose lanes all ended (tasks left are in flight or backing off).
ROUND_WAIT = Duration.seconds(10)
#: Tries of a worker call after a Lambda service error (throttling above the account's concurrency).
WORKER_RETRIES = 5


class Workflow(Construct):
    """The Standard state machine that runs a cube.

    :ivar state_machine: the state machine (start it with the spec as input).
    :ivar log_group: its execution log (level ALL).
    :ivar lock_policy: lets the planner and the commit ask whether an execution of this state
        machine still runs (``states:DescribeExecution``), to judge a cube lock's holder.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        planner: lambda_.IFunction,
        worker: lambda_.IFunction,
        commit: lambda_.IFunction,
        progress: lambda_.IFunction,
        max_lanes: int,
        tolerated_failure_percentage: float,
        log_retention_days: int,
        run_timeout: Duration = Duration.days(7),
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

        # The failure paths after the lock was taken: give it up, then fail with the original error.
        release = self._invoke(
            "Release", commit, {"action": "release", "run.$": "$.run", "execution": sfn.JsonPath.execution_id},
            result_path=sfn.JsonPath.DISCARD,
            comment="Give the cube lock up (only if it still names this execution); the error at $.error is kept.",
        )
        release.add_catch(explain, errors=["States.ALL"], result_path="$.release_error")  # never hides the run's error
        release.next(explain)

        plan = self._invoke(
            # The execution input as it was started, and the execution that takes the cube lock.
            "Plan", planner, {"input": sfn.JsonPath.entire_payload, "execution": sfn.JsonPath.execution_id},
            comment="Validate the spec, take the cube lock, plan or resume the run, enqueue its tasks; returns the run record and the first round's lanes.",
        )
        plan.add_catch(explain, errors=USER_FACING, result_path="$.error")

        # -- one lane: a few worker calls, each taking tasks for most of its 90 s --------------------
        work = tasks.LambdaInvoke(
            self,
            "Work",
            lambda_function=worker,
            payload=sfn.TaskInput.from_object({"run_id.$": "$.run_id", "lane.$": "$.lane", "calls.$": "$.calls"}),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            task_timeout=sfn.Timeout.duration(WORKER_TIMEOUT),
            comment="Tasks from the queue until ~75 s are used; a failed task is recorded and backs off, never raised.",
        )
        work.add_retry(
            errors=LAMBDA_TRANSIENT,
            max_attempts=WORKER_RETRIES,
            interval=Duration.seconds(2),
            backoff_rate=2,
            max_delay=Duration.seconds(60),
            jitter_strategy=sfn.JitterType.FULL,
        )
        lane_done = sfn.Succeed(self, "Lane done", output_path="$.lane", comment="A small output: the Map keeps every lane's.")
        work.add_catch(
            sfn.Succeed(self, "Lane ended", output_path="$.lane", comment="A worker call failed (e.g. timed out): the next round starts the lane again."),
            errors=["States.ALL"],
            result_path="$.error",
        )
        lane = work.next(sfn.Choice(self, "More?").when(sfn.Condition.boolean_equals("$.more", True), work).otherwise(lane_done))
        workers = sfn.DistributedMap(
            self,
            "Workers",
            items_path="$.progress.lanes",
            item_selector={"lane.$": "$$.Map.Item.Value", "run_id.$": "$.run.run_id", "calls": 0},
            max_concurrency=max_lanes,
            tolerated_failure_percentage=float(tolerated_failure_percentage),
            map_execution_type=sfn.StateMachineType.STANDARD,
            result_path=sfn.JsonPath.DISCARD,
            label="workers",
            comment="One round: each lane is a short worker loop; the progress step judges the run's tasks.",
        )
        workers.item_processor(lane)

        progress_task = self._invoke(
            "Progress", progress, {"run.$": "$.run", "progress.$": "$.progress"}, retries=5,
            result_path="$.progress",
            comment="Done and dead-lettered tasks of this run (its markers, never queue counts); the next round's lanes.",
        )
        progress_task.add_catch(release, errors=["RunStalled"], result_path="$.error")

        commit_task = self._invoke(
            "Commit", commit, {"run.$": "$.run", "spec.$": "$.spec", "execution": sfn.JsonPath.execution_id},
            result_path="$.manifest",
            comment="Publish the run's bins and release the cube lock; RunIncomplete names the dead-lettered tasks and `cubeless redrive`.",
        )
        commit_task.add_catch(release, errors=COMMIT_FAILURES, result_path="$.error")

        next_round = sfn.Wait(self, "Next round", time=sfn.WaitTime.duration(ROUND_WAIT), comment="Tasks left are in flight or backing off.")
        workers.next(progress_task).next(
            sfn.Choice(self, "Complete?")
            .when(sfn.Condition.boolean_equals("$.progress.complete", True), commit_task.next(sfn.Succeed(self, "Committed")))
            .otherwise(next_round.next(workers))
        )
        definition = plan.next(
            sfn.Choice(self, "Anything to do?")
            .when(sfn.Condition.is_null("$.run"), sfn.Succeed(self, "Up to date", comment="Every bin of the spec is committed."))
            .otherwise(workers)
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
            timeout=run_timeout,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            comment="cubeless: plan a run, rounds of worker lanes until its tasks are done or dead-lettered, commit",
        )
        # A separate policy, not the functions' own: the state machine depends on the functions, so
        # their role's default policy cannot name its executions (a cycle); this one comes after both.
        executions = Stack.of(self).format_arn(
            service="states",
            resource="execution",
            resource_name=f"{self.state_machine.state_machine_name}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.lock_policy = iam.Policy(
            self,
            "LockHolderCheck",
            statements=[iam.PolicyStatement(actions=["states:DescribeExecution"], resources=[executions])],
            roles=[fn.role for fn in (planner, commit) if fn.role is not None],
        )
        acknowledge_resource(
            self.lock_policy, executions, "Any execution of this one state machine: a cube lock names the execution holding it (names are chosen per run)."
        )
        role = self.state_machine.role
        for fn in (planner, worker, commit, progress):
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

    def _invoke(self, name: str, fn: lambda_.IFunction, payload: dict, *, comment: str, retries: int = 3,
                **kw: object) -> tasks.LambdaInvoke:
        """A control step (plan, progress, commit, release): the function's own result as output, and
        ``retries`` tries again on Lambda's transient errors (2 s, doubling, full jitter)."""
        step = tasks.LambdaInvoke(self, name, lambda_function=fn, payload=sfn.TaskInput.from_object(payload),
                                  payload_response_only=True, retry_on_service_exceptions=False, comment=comment, **kw)
        step.add_retry(errors=LAMBDA_TRANSIENT, max_attempts=retries, interval=Duration.seconds(2), backoff_rate=2,
                       jitter_strategy=sfn.JitterType.FULL)
        return step


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]
