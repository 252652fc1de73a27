"""What a run costs on AWS: Lambda (per GB-second and per request) plus Step Functions transitions.

:func:`estimate_cost` turns task durations (measured or assumed) into a
:class:`~cubeless.models.CostEstimate` at list prices (us-east-1). It is what ``cubeless plan``
can print before a run (from an assumed task time) and what the commit step can record in the
manifest after one (from the done markers' ``seconds``).

The model follows the deployed state machine (``infra/workflow.py``): a planner invocation, then
``lanes`` worker loops (a Distributed Map, one child execution per lane) that each invoke the
worker once per task, then the commit. Per task: one worker invocation billed for its duration at
the worker's memory, and ``transitions_per_task`` state transitions (the ``Work`` task and the
``Drained?`` choice). Per lane: the invocation that finds the queue drained, the child
execution's start/choice/succeed transitions, and ``idle_polls_per_lane`` rounds of
Wait -> Work -> Choice while other lanes finish. Per run: the planner and commit invocations and
the outer machine's transitions.

Not included: S3 requests (each task PUTs one object per variable and a done marker:
about $0.005 per 1,000 PUTs), SQS requests ($0.40 per million 64 KiB chunks), CloudWatch Logs,
data transfer (none within the bucket's region), and the free tier.
"""

from __future__ import annotations

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
#: ``Work`` (task state) and ``Drained?`` (choice) per task, in a lane.
TRANSITIONS_PER_TASK = 2.0
#: Per lane: child execution start, the final ``Work``, ``Drained?`` and ``Lane done``.
TRANSITIONS_PER_LANE = 4
#: Per run: Plan, Anything to do?, Lanes (map), Commit, Committed, plus slack for commit retries.
TRANSITIONS_PER_RUN = 8
#: Seconds billed for a worker invocation that finds no task (long poll of the queue).
IDLE_INVOCATION_SECONDS = 1.0
#: Seconds billed for the planner and for the commit invocation (each).
CONTROL_INVOCATION_SECONDS = 10.0
#: Memory (MB) of the planner and commit functions.
CONTROL_MEMORY_MB = 2048


def estimate_cost(
    task_seconds: Sequence[float] | float,
    tasks: int,
    memory_mb: int,
    *,
    arch: Arch = "arm64",
    lanes: int = 20,
    transitions_per_task: float = TRANSITIONS_PER_TASK,
    idle_polls_per_lane: int = 2,
    prices: Prices = PRICES,
) -> CostEstimate:
    """Dollars to run ``tasks`` worker tasks of ``task_seconds`` each at ``memory_mb`` MB.

    :param task_seconds: billed seconds of one task (a number), or a sample of measured task
        durations (their mean is used for every task; a list of all of them gives the exact sum).
    :param tasks: number of tasks in the run.
    :param memory_mb: worker memory; Lambda bills GB-seconds = memory_mb / 1024 x seconds.
    :param arch: ``arm64`` (default, cheaper) or ``x86_64``.
    :param lanes: parallel worker loops (the state machine's Distributed Map items).
    :param transitions_per_task: Step Functions state transitions per task in a lane.
    :param idle_polls_per_lane: Wait -> Work -> Choice rounds a lane spends waiting at the end.
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
    lanes_used = min(lanes, tasks) if tasks else 0

    gb = memory_mb / 1024
    idle_invocations = lanes_used * (1 + idle_polls_per_lane)
    gb_seconds = (
        gb * total_task_seconds
        + gb * IDLE_INVOCATION_SECONDS * idle_invocations
        + CONTROL_MEMORY_MB / 1024 * CONTROL_INVOCATION_SECONDS * 2
    )
    requests = tasks + idle_invocations + 2
    transitions = round(
        transitions_per_task * tasks
        + lanes_used * (TRANSITIONS_PER_LANE + 3 * idle_polls_per_lane)
        + TRANSITIONS_PER_RUN
    )
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
