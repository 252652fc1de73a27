"""The cost model: Lambda GB-seconds and requests plus Step Functions transitions, at list prices."""

from __future__ import annotations

import pytest

from cubeless.cost import (
    CONTROL_INVOCATION_SECONDS,
    CPU_SECONDS_PER_SCENE_MEGAPIXEL,
    TASK_OVERHEAD_SECONDS,
    guess_task_seconds,
    CONTROL_MEMORY_MB,
    IDLE_INVOCATION_SECONDS,
    PRICES,
    PROGRESS_INVOCATION_SECONDS,
    PROGRESS_MEMORY_MB,
    TRANSITIONS_PER_RUN,
    estimate_cost,
    run_shape,
    tasks_per_call,
    lambda_task_seconds,
    lambda_vcpus,
)
from cubeless.models import CostEstimate


def test_hand_computed_run():
    # 10 s tasks: a call takes tasks at 90, 80, ..., 20 s left (8 of them), then 10 s < the 15 s reserve.
    assert tasks_per_call(10.0) == 8
    est = estimate_cost(10.0, 1000, 2048, lanes=10)
    assert isinstance(est, CostEstimate)
    # 1,000 tasks / 8 = 125 calls; 10 lanes x 10 calls = 100 per round -> 2 rounds, 13 children;
    # in the last round 25 calls work and the lanes without work make one (empty) call: none here.
    shape = run_shape(10.0, 1000, 10)
    assert (shape.calls, shape.lanes_used, shape.children, shape.rounds) == (125, 10, 13, 2)
    control_gbs = CONTROL_MEMORY_MB / 1024 * CONTROL_INVOCATION_SECONDS * 2
    progress_gbs = PROGRESS_MEMORY_MB / 1024 * PROGRESS_INVOCATION_SECONDS * 2
    gbs = 2.0 * 10.0 * 1000 + 2.0 * IDLE_INVOCATION_SECONDS * 10 + control_gbs + progress_gbs
    assert est.gb_seconds == pytest.approx(gbs)
    assert est.requests == 125 + 2 + 2  # worker calls, progress per round, planner and commit
    assert est.state_transitions == 2 * 125 + 13 + 4 * 2 - 1 + TRANSITIONS_PER_RUN
    lam = gbs * 0.0000133334 + est.requests * 0.20 / 1e6
    sfn = est.state_transitions * 0.025 / 1000
    assert est.lambda_usd == pytest.approx(lam, abs=1e-6)
    assert est.step_functions_usd == pytest.approx(sfn, abs=1e-6)
    assert est.total_usd == pytest.approx(lam + sfn, abs=1e-6)
    assert est.usd_per_1000_tasks == pytest.approx((lam + sfn), abs=1e-5)


def test_a_call_holds_many_short_tasks_and_one_long_one():
    assert [tasks_per_call(t) for t in (1.0, 5.0, 30.0, 50.0, 80.0)] == [75, 15, 2, 1, 1]
    assert tasks_per_call(0.0) > 1000  # empty bins: only the receive, the markers and the delete


def test_per_task_cost_is_about_linear_in_seconds_and_memory():
    a = estimate_cost(5.0, 100_000, 2048)
    c = estimate_cost(5.0, 100_000, 4096)
    b = estimate_cost(10.0, 100_000, 2048)
    assert b.lambda_usd / a.lambda_usd == pytest.approx(2.0, rel=0.01)
    assert c.lambda_usd / a.lambda_usd == pytest.approx(2.0, rel=0.01)
    # Step Functions at 5 s per task: 15 tasks per call, ~140 transitions per 1,000 tasks, under $0.005
    # (the per-task loop this replaced: $0.050); a 1,000,000-task run the same per task.
    assert a.step_functions_usd / 100 == pytest.approx(0.0035, rel=0.03)
    assert estimate_cost(5.0, 1_000_000, 2048).step_functions_usd / 1000 == pytest.approx(0.0035, rel=0.03)


def test_a_sample_of_durations_is_scaled_to_the_run():
    exact = estimate_cost([1.0, 2.0, 3.0, 4.0], 4, 1024)
    assert exact.gb_seconds == pytest.approx(1.0 * 10 + estimate_cost(0.0, 4, 1024).gb_seconds)
    sampled = estimate_cost([1.0, 3.0], 1000, 1024)
    assert sampled.gb_seconds == pytest.approx(estimate_cost(2.0, 1000, 1024).gb_seconds)


def test_x86_costs_more_than_arm():
    arm = estimate_cost(8.0, 10_000, 2048)
    x86 = estimate_cost(8.0, 10_000, 2048, arch="x86_64")
    assert x86.lambda_usd > arm.lambda_usd
    assert x86.lambda_usd / arm.lambda_usd == pytest.approx(
        PRICES.lambda_gb_second["x86_64"] / PRICES.lambda_gb_second["arm64"], rel=0.01
    )


def test_no_tasks_costs_the_control_functions_only():
    est = estimate_cost(10.0, 0, 2048)
    assert est.requests == 2 and est.usd_per_1000_tasks == 0.0  # no round, no worker call
    assert est.state_transitions == TRANSITIONS_PER_RUN


@pytest.mark.parametrize(
    "args,kw,match",
    [
        ((1.0, -1, 2048), {}, "tasks"),
        ((1.0, 10, 64), {}, "memory"),
        ((1.0, 10, 2048), {"lanes": 0}, "lanes"),
        ((1.0, 10, 2048), {"arch": "sparc"}, "arch"),
        (([], 10, 2048), {}, "empty"),
        ((-1.0, 10, 2048), {}, ">= 0"),
    ],
)
def test_bad_arguments_are_refused(args, kw, match):
    with pytest.raises(ValueError, match=match):
        estimate_cost(*args, **kw)


def test_lambda_cpu_share():
    assert lambda_vcpus(1769) == pytest.approx(1.0)
    assert lambda_vcpus(10_240) == pytest.approx(10_240 / 1769) and lambda_vcpus(12_000) == 6.0
    assert lambda_task_seconds(10.0, 1769) == pytest.approx(10.0)
    assert lambda_task_seconds(10.0, 2048) == pytest.approx(10.0 / (2048 / 1769))
    assert lambda_task_seconds(10.0, 8192, threads=2) == pytest.approx(5.0)


def test_guessed_task_seconds_scale_with_scenes_and_pixels():
    base = guess_task_seconds(1200 * 1200, 25, 1769)
    assert base == pytest.approx(TASK_OVERHEAD_SECONDS + CPU_SECONDS_PER_SCENE_MEGAPIXEL * 25 * 1.44)
    assert guess_task_seconds(1200 * 1200, 50, 1769) - TASK_OVERHEAD_SECONDS == pytest.approx(2 * (base - TASK_OVERHEAD_SECONDS))
    assert guess_task_seconds(1200 * 1200, 0, 2048) == TASK_OVERHEAD_SECONDS  # an empty bin only writes a marker
    # a plan's tasks, summed exactly
    tasks = [(1200 * 1200, 25), (1200 * 300, 10), (1200 * 1200, 0)]
    est = estimate_cost([guess_task_seconds(p, n, 2048) for p, n in tasks], len(tasks), 2048)
    assert est.gb_seconds > 2.0 * sum(guess_task_seconds(p, n, 2048) for p, n in tasks)
