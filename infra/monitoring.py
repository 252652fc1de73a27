"""Monitoring: a dashboard of runs and tasks, and alarms on dead-lettered tasks and failed runs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

#: Powertools metrics namespace of the handlers (lambdas/observability.py).
NAMESPACE = "cubeless"
PERIOD = Duration.minutes(5)


def task_metric(name: str, *, statistic: str = "Sum", label: str | None = None) -> cw.Metric:
    """A metric the worker emits (dimension ``service=worker``)."""
    return cw.Metric(
        namespace=NAMESPACE, metric_name=name, dimensions_map={"service": "worker"}, statistic=statistic, period=PERIOD, label=label
    )


class Monitoring(Construct):
    """Dashboard and alarms.

    :ivar dashboard: tasks done/failed, worker duration p50/p95, concurrency, queue and DLQ depth,
        worker calls, dead-lettered tasks and rounds, runs.
    :ivar dlq_alarm: any message in the dead-letter queue.
    :ivar failed_runs_alarm: any failed, timed-out or aborted execution.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        worker: lambda_.IFunction,
        state_machine: sfn.IStateMachine,
        queue: sqs.IQueue,
        dead_letter_queue: sqs.IQueue,
        alarm_topic_arn: str | None = None,
    ) -> None:
        super().__init__(scope, id)
        dlq_depth = dead_letter_queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), statistic="Maximum")
        self.dlq_alarm = dlq_depth.create_alarm(
            self,
            "DeadLetterAlarm",
            alarm_description="Tasks failed every try and wait in the dead-letter queue; see the run's failed/ markers, then redrive.",
            threshold=0,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        runs_failed = cw.MathExpression(
            expression="failed + timedout + aborted",
            using_metrics={
                "failed": state_machine.metric_failed(period=PERIOD),
                "timedout": state_machine.metric_timed_out(period=PERIOD),
                "aborted": state_machine.metric_aborted(period=PERIOD),
            },
            label="runs failed",
            period=PERIOD,
        )
        self.failed_runs_alarm = runs_failed.create_alarm(
            self,
            "FailedRunsAlarm",
            alarm_description="A cubeless run failed; its execution's cause says why in one line.",
            threshold=0,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        if alarm_topic_arn:
            topic = sns.Topic.from_topic_arn(self, "AlarmTopic", alarm_topic_arn)
            for alarm in (self.dlq_alarm, self.failed_runs_alarm):
                alarm.add_alarm_action(cw_actions.SnsAction(topic))

        self.dashboard = cw.Dashboard(self, "Dashboard", default_interval=Duration.hours(6))
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Tasks done / failed (per 5 min)",
                left=[task_metric("TasksDone", label="done"), task_metric("TasksFailed", label="failed")],
                width=12,
            ),
            cw.GraphWidget(
                title="Worker duration (ms)",
                left=[
                    worker.metric_duration(statistic="p50", period=PERIOD, label="p50"),
                    worker.metric_duration(statistic="p95", period=PERIOD, label="p95"),
                ],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Concurrency",
                left=[worker.metric("ConcurrentExecutions", statistic="Maximum", period=Duration.minutes(1), label="worker invocations")],
                right=[state_machine.metric_started(period=PERIOD, label="runs started")],
                width=12,
            ),
            cw.GraphWidget(
                title="Queue",
                left=[
                    queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), statistic="Maximum", label="queued"),
                    queue.metric_approximate_number_of_messages_not_visible(period=Duration.minutes(1), statistic="Maximum", label="in flight"),
                ],
                right=[dlq_depth.with_(label="dead-lettered")],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Worker calls, dead-lettered tasks, rounds (per 5 min)",
                left=[task_metric("WorkerCalls", label="worker calls"), task_metric("TasksDeadLettered", label="dead-lettered")],
                right=[
                    cw.Metric(namespace=NAMESPACE, metric_name="RunRounds", dimensions_map={"service": "progress"}, statistic="Sum",
                              period=PERIOD, label="rounds (progress steps)")
                ],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Runs",
                left=[
                    state_machine.metric_succeeded(period=PERIOD, label="succeeded"),
                    runs_failed,
                ],
                width=12,
            ),
            cw.AlarmStatusWidget(title="Alarms", alarms=[self.dlq_alarm, self.failed_runs_alarm], width=12),
        )
