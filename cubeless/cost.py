"""What a run costs on AWS: Lambda (per GB-second and per request) plus Step Functions transitions.

:func:`estimate_cost` turns task durations (measured or assumed) into a
:class:`~cubeless.models.CostEstimate` at list prices (us-east-1). It is what ``cubeless plan``
can print before a run (from an assumed task time) and what the commit step can record in the
manifest after one (from the done markers' ``seconds``).

The model follows the deployed state machine (``infra/workflow.py``): a planner invocation, then
rounds of ``lanes`` worker lanes (a Distributed Map, one Standard child execution per lane), a
progress invocation per round, then the commit. A worker call takes tasks one after another
until less than :data:`WORKER_RESERVE_SECONDS` of its :data:`WORKER_TIMEOUT_SECONDS` (or 1.5x
its longest task) is left (:func:`tasks_per_call` mirrors ``lambdas/worker.py``); a lane makes
at most :data:`MAX_CALLS_PER_LANE` calls per round. Transitions: per worker call
``Work`` + ``More?`` (2), per lane ``Lane done`` (1), per round ``Workers``, ``Progress``,
``Complete?``, ``Next round`` (4), per run ``Plan``, ``Anything to do?``, ``Commit``,
``Committed`` (4). At 5 s per task a call does 15 tasks: ~140 transitions per 1,000 tasks,
$0.0035 (the per-task loop it replaced: 2 per task, $0.050). Above ~7 s per task a call holds
fewer than 11 tasks and the figure passes $0.005 (10 s: $0.0066), while the Lambda part grows
faster ($0.27 per 1,000 tasks at 10 s), so Step Functions stays under 2.5 % of the bill.
Express children were considered and rejected: Express bills the duration a lane waits on its
worker calls (64 MB x $0.0000166667 per GB-second x 5,000 s for 1,000 tasks of 5 s = $0.0052
per 1,000 tasks, more than Standard's transitions) and ends at 5 minutes.

Not included: S3 requests (each task PUTs one object per variable and a done marker:
about $0.005 per 1,000 PUTs; the progress step LISTs done/ once per round, $0.005 per 1,000
pages of 1,000 keys), SQS requests ($0.40 per million 64 KiB chunks), CloudWatch Logs,
data transfer (none within the bucket's region), and the free tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from .models import CostEstimate

Arch = Literal["arm64", "x86_64"]


@dataclass(frozen=True)
class Prices:
    """List prices in USD (us-east-1)."""

    #: Lambda compute per GB-second, by architecture (first pricing tier).
    lambda_gb_second: dict[str, float]
    #: Lambda requests, per request ($0.20 per million).
    lambda_request: float = 0.20 / 1_000_000
    #: Step Functions Standard, per state transition ($0.025 per 1,000).
    state_transition: float = 0.025 / 1_000


PRICES = Prices(lambda_gb_second={"arm64": 0.0000133334, "x86_64": 0.0000166667})

#: The stack's default worker memory (infra/settings.py), used when the caller does not say.
DEFAULT_MEMORY_MB = 2048
#: The stack's default lanes per run (infra/settings.py): concurrent worker invocations.
DEFAULT_LANES = 900
#: The worker's timeout (infra/functions.py WORKER_TIMEOUT).
WORKER_TIMEOUT_SECONDS = 90.0
#: A worker call stops taking tasks when less than this (or 1.5x its longest task) is left.
WORKER_RESERVE_SECONDS = 15.0
#: Worker calls a lane makes per round before it returns to the parent execution.
MAX_CALLS_PER_LANE = 10
#: After this many failed tries in a row, a worker call pauses before it takes the next task
#: (:func:`streak_pause`): in a burst of S3 503s every try fails in about a second, and without a
#: pause 900 lanes would back off ~180,000 messages at once, above SQS's 120,000 in flight, and
#: spend the tries of tasks that have nothing wrong with them (``make bench`` 7b).
FAILURE_STREAK = 3
#: The first pause (s); it doubles with each further failure, up to :data:`STREAK_PAUSE_MAX_SECONDS`.
STREAK_PAUSE_SECONDS = 5.0
STREAK_PAUSE_MAX_SECONDS = 30.0
#: Seconds a task takes at least (receive, HEAD of the done marker, delete): a floor for the model.
MIN_TASK_SECONDS = 0.05
#: ``Work`` (task state) and ``More?`` (choice) per worker call, in a lane.
TRANSITIONS_PER_CALL = 2
#: Per lane (child execution): ``Lane done``.
TRANSITIONS_PER_LANE = 1
#: Per round: ``Workers`` (map), ``Progress``, ``Complete?``, ``Next round`` (wait).
TRANSITIONS_PER_ROUND = 4
#: Per run: Plan, Anything to do?, Commit, Committed.
TRANSITIONS_PER_RUN = 4
#: Seconds billed for the call that finds the queue empty (its long poll), once per lane.
IDLE_INVOCATION_SECONDS = 1.0
#: Seconds billed for the planner and for the commit invocation (each).
CONTROL_INVOCATION_SECONDS = 10.0
#: Memory (MB) of the planner and commit functions.
CONTROL_MEMORY_MB = 2048
#: Seconds and memory (MB) billed for one progress invocation (two listings).
PROGRESS_INVOCATION_SECONDS = 2.0
PROGRESS_MEMORY_MB = 1024


def streak_pause(streak: int) -> float:
    """Seconds a worker call waits before its next task after ``streak`` failed tries in a row
    (0 below :data:`FAILURE_STREAK`; a success ends the streak). The worker and the simulation
    both use it."""
    if streak < FAILURE_STREAK:
        return 0.0
    return min(STREAK_PAUSE_MAX_SECONDS, STREAK_PAUSE_SECONDS * 2 ** (streak - FAILURE_STREAK))


def tasks_per_call(task_seconds: float) -> int:
    """Tasks one worker call takes, back to back (the loop of ``lambdas/worker.py``)."""
    t = max(float(task_seconds), MIN_TASK_SECONDS)
    left, n, longest = WORKER_TIMEOUT_SECONDS, 0, 0.0
    while left > max(WORKER_RESERVE_SECONDS, 1.5 * longest):
        n += 1
        left -= t
        longest = t
    return max(1, n)


def estimate_cost(
    task_seconds: Sequence[float] | float,
    tasks: int,
    memory_mb: int,
    *,
    arch: Arch = "arm64",
    lanes: int = DEFAULT_LANES,
    prices: Prices = PRICES,
) -> CostEstimate:
    """Dollars to run ``tasks`` worker tasks of ``task_seconds`` each at ``memory_mb`` MB.

    :param task_seconds: billed seconds of one task (a number), or a sample of measured task
        durations (their mean is used for every task; a list of all of them gives the exact sum).
    :param tasks: number of tasks in the run.
    :param memory_mb: worker memory; Lambda bills GB-seconds = memory_mb / 1024 x seconds.
    :param arch: ``arm64`` (default, cheaper) or ``x86_64``.
    :param lanes: lanes of the run (the Distributed Map's items per round).
    """
    if tasks < 0:
        raise ValueError(f"tasks must be >= 0, got {tasks}")
    if not 128 <= memory_mb <= 10_240:
        raise ValueError(f"Lambda memory is 128..10240 MB, got {memory_mb}")
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    if arch not in prices.lambda_gb_second:
        raise ValueError(f"arch is one of {sorted(prices.lambda_gb_second)}, got {arch!r}")
    if isinstance(task_seconds, (int, float)):
        per_task = float(task_seconds)
        total_task_seconds = per_task * tasks
    else:
        sample = [float(s) for s in task_seconds]
        if not sample:
            raise ValueError("task_seconds is an empty sample; give at least one duration")
        total_task_seconds = sum(sample) if len(sample) == tasks else sum(sample) / len(sample) * tasks
    if total_task_seconds < 0:
        raise ValueError("task durations must be >= 0 seconds")
    shape = run_shape(total_task_seconds / tasks if tasks else 0.0, tasks, lanes)

    gb = memory_mb / 1024
    gb_seconds = (
        gb * total_task_seconds
        + gb * IDLE_INVOCATION_SECONDS * shape.lanes_used
        + CONTROL_MEMORY_MB / 1024 * CONTROL_INVOCATION_SECONDS * 2
        + PROGRESS_MEMORY_MB / 1024 * PROGRESS_INVOCATION_SECONDS * shape.rounds
    )
    requests = shape.calls + shape.rounds + 2
    transitions = shape.transitions
    lambda_usd = gb_seconds * prices.lambda_gb_second[arch] + requests * prices.lambda_request
    sfn_usd = transitions * prices.state_transition
    total = lambda_usd + sfn_usd
    return CostEstimate(
        gb_seconds=round(gb_seconds, 3),
        requests=requests,
        state_transitions=transitions,
        lambda_usd=round(lambda_usd, 6),
        step_functions_usd=round(sfn_usd, 6),
        total_usd=round(total, 6),
        usd_per_1000_tasks=round(total / tasks * 1000, 6) if tasks else 0.0,
    )


@dataclass(frozen=True)
class RunShape:
    """How a run of ``tasks`` splits into worker calls, lanes and rounds (no failures)."""

    tasks_per_call: int
    calls: int  #: worker invocations
    lanes_used: int  #: lanes per round (at most one per task)
    children: int  #: child executions (lanes x rounds, fewer in the last round)
    rounds: int  #: Map runs of the parent execution

    @property
    def transitions(self) -> int:
        if not self.calls:
            return TRANSITIONS_PER_RUN
        return (
            TRANSITIONS_PER_CALL * self.calls
            + TRANSITIONS_PER_LANE * self.children
            + TRANSITIONS_PER_ROUND * self.rounds
            - 1  # the last round goes to Commit, not to Next round
            + TRANSITIONS_PER_RUN
        )


def run_shape(task_seconds: float, tasks: int, lanes: int = DEFAULT_LANES) -> RunShape:
    """The calls, lanes and rounds of a run whose tasks take ``task_seconds`` each."""
    if tasks <= 0:
        return RunShape(tasks_per_call(task_seconds), 0, 0, 0, 0)
    per_call = tasks_per_call(task_seconds)
    calls = math.ceil(tasks / per_call)
    lanes_used = min(lanes, calls)
    per_round = lanes_used * MAX_CALLS_PER_LANE
    rounds = math.ceil(calls / per_round)
    children = max(lanes_used, math.ceil(calls / MAX_CALLS_PER_LANE))
    # the lanes of the last round that find nothing left: one call each
    calls += max(0, lanes_used - (calls - (rounds - 1) * per_round))
    return RunShape(per_call, calls, lanes_used, children, rounds)


#: CPU seconds a task spends per scene and per million target pixels (read, mask, median, write),
#: from ``make bench`` (docs/benchmarks.md): ~6.2 CPU s for 25 scenes on a 1200 x 1200 tile at 30 m.
CPU_SECONDS_PER_SCENE_MEGAPIXEL = 0.17
#: Fixed seconds per task (start, imports already warm, writing markers).
TASK_OVERHEAD_SECONDS = 0.3


def guess_task_seconds(pixels: int, scenes: int, memory_mb: int) -> float:
    """A task's duration on Lambda before it ran: :data:`CPU_SECONDS_PER_SCENE_MEGAPIXEL` x scenes x
    megapixels of its tile, over the vCPUs of ``memory_mb`` (see :func:`lambda_task_seconds`)."""
    cpu = CPU_SECONDS_PER_SCENE_MEGAPIXEL * max(0, scenes) * max(0, pixels) / 1e6
    return TASK_OVERHEAD_SECONDS + lambda_task_seconds(cpu, memory_mb)


def lambda_vcpus(memory_mb: int) -> float:
    """vCPUs Lambda allocates at ``memory_mb`` (proportional: 1,769 MB is one vCPU, at most 6)."""
    return min(6.0, memory_mb / 1769)


def lambda_task_seconds(cpu_seconds: float, memory_mb: int, *, threads: int = 2) -> float:
    """A CPU-bound task's duration on Lambda: its CPU seconds spread over the vCPUs it gets
    (at most ``threads`` busy at once), assuming a Lambda vCPU works as fast as the measuring core."""
    return cpu_seconds / max(min(lambda_vcpus(memory_mb), float(threads)), 1e-9)
