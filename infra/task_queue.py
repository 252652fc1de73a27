"""Task queue: one SQS message per task, and a dead-letter queue for tasks that failed every try."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

#: Receives before a task is parked in the DLQ: the first try plus 5 retries.
MAX_RECEIVE_COUNT = 6


class TaskQueue(Construct):
    """The work queue shared by every run (messages carry their run id and the whole task).

    :ivar queue: the task queue.
    :ivar dead_letter_queue: where a task lands after ``MAX_RECEIVE_COUNT`` receives.
    """

    def __init__(self, scope: Construct, id: str, *, worker_timeout: Duration) -> None:
        super().__init__(scope, id)
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            # Twice the worker's timeout: a worker killed at its deadline frees its task soon, and a
            # live one is never overtaken (failed tries shorten their own visibility, see cubeless.aws).
            visibility_timeout=Duration.seconds(worker_timeout.to_seconds() * 2),
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=MAX_RECEIVE_COUNT),
        )
