"""The orchestration simulation (bench/orchestration.py) on small cases, driven by the synthesized
template: every task done or dead-lettered, no quota exceeded, workers busy. The million-task
runs and their figures are ``make bench`` section 7, not timed tests."""

from __future__ import annotations

import copy

import pytest
from infra_helpers import Synth, definition

from bench.orchestration import Config, DefinitionDrift, Scenario, check, config_from_definition, config_from_template, simulate

STACK = "cubeless"


@pytest.fixture(scope="module")
def config(synth: Synth) -> Config:
    return config_from_template(synth.templates[STACK])


def test_the_simulation_reads_the_deployed_definition(config: Config) -> None:
    assert (config.max_concurrency, config.worker_timeout, config.retry_attempts, config.round_wait) == (1000, 90.0, 5, 10.0)
    assert config.retry_jitter and config.catch_all and "Lambda.TooManyRequestsException" in config.retry_errors
    assert (config.visibility_timeout, config.max_receives) == (180.0, 6)


def test_a_changed_definition_is_refused_not_simulated(synth: Synth) -> None:
    d = definition(synth.templates[STACK])
    bad = copy.deepcopy(d)
    bad["States"]["Workers"]["ItemProcessor"]["States"]["Work"]["Retry"][0]["ErrorEquals"].append("States.TaskFailed")
    with pytest.raises(DefinitionDrift, match="retries task failures"):
        config_from_definition(bad)
    loop = copy.deepcopy(d)  # a per-task loop in the parent, without the Map
    loop["States"]["Next round"]["Next"] = "Progress"
    with pytest.raises(DefinitionDrift, match="Wait state leading back"):
        config_from_definition(loop)


def test_a_run_keeps_its_workers_busy_and_finishes_within_1_25x_of_ideal(config: Config) -> None:
    sc = Scenario(tasks=5000, lanes=60)
    r = simulate(config, sc)
    assert check(r, sc) == []
    assert r.done == set(range(5000)) and r.committed == [True] and r.duplicates == 0
    assert r.time_ratio <= 1.25 and r.utilisation >= 0.9, (r.time_ratio, r.utilisation)
    assert r.largest_history < 1000 and r.step_functions_usd_per_1000 < 0.005


def test_transient_failures_and_poison_tasks(config: Config) -> None:
    sc = Scenario(tasks=5000, lanes=60, transient_rate=1e-3, poison=4, seed=3)
    r = simulate(config, sc)
    assert check(r, sc) == []
    assert len(r.dead) == 4 and r.dead == r.dlq and r.committed == [False]  # the commit names them: RunIncomplete
    assert r.tries_failed >= 4 * 6 and len(r.done) == 4996


def test_a_burst_of_503s_kills_no_lane_and_loses_no_task(config: Config) -> None:
    sc = Scenario(tasks=5000, lanes=60, burst=(200.0, 500.0))
    r = simulate(config, sc)
    assert check(r, sc) == [] and r.committed == [True] and len(r.done) == 5000


def test_workers_pause_in_a_long_burst_so_no_healthy_task_runs_out_of_tries(config: Config) -> None:
    # 10 minutes of 503s, longer than a task's 5 backoffs (310 s): without the pause after a streak
    # of failures, 60 lanes fail ~20,000 tries and 42 healthy tasks are dead-lettered.
    sc = Scenario(tasks=5000, lanes=60, burst=(200.0, 800.0))
    r = simulate(config, sc)
    assert check(r, sc) == [] and r.committed == [True] and len(r.done) == 5000 and not r.dead
    assert r.tries_failed < 5000 and r.paused_seconds > 0


def test_two_runs_on_one_queue_and_a_parent_stopped_and_started_again(config: Config) -> None:
    sc = Scenario(tasks=3000, lanes=40, runs=2)
    r = simulate(config, sc)
    assert check(r, sc) == [] and r.committed == [True, True]
    assert max(r.seconds_to_cube) - min(r.seconds_to_cube) < 60  # neither waits for the other's tasks
    sc = Scenario(tasks=3000, lanes=40, stop_at=250.0, restart_after=30.0)
    r = simulate(config, sc)
    assert check(r, sc) == [] and r.committed == [True] and len(r.done) == 3000


def test_lambda_throttling_above_the_account_concurrency_is_retried(config: Config) -> None:
    sc = Scenario(tasks=3000, lanes=40, runs=2, account_concurrency=50)
    r = simulate(config, sc)
    assert r.throttles > 0 and r.max_concurrency <= 50
    assert check(r, sc) == [] and r.committed == [True, True]
