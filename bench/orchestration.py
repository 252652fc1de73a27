"""A discrete-event simulation of the deployed orchestration (issue 11), driven by the synthesized
state-machine definition, so that it cannot drift from the template.

:func:`config_from_definition` reads what the simulation runs from the ASL that ``cdk synth``
writes: the Distributed Map (its ``MaxConcurrency``, the child's ``Work`` -> ``More?`` loop), the
worker state's ``TimeoutSeconds``, ``Retry`` (errors, attempts, interval, backoff, max delay,
jitter) and ``Catch``, the wait between rounds, and the progress/commit states. A definition
with another shape raises :class:`DefinitionDrift` instead of being simulated wrongly.

What is modelled:

* **SQS**: one queue shared by the runs; a received message is invisible for the visibility
  timeout (or the backoff the worker sets after a failed try); receive counts; on a receive of a
  message already received ``maxReceiveCount`` times SQS moves it to the DLQ; the worker parks a
  failed last try in the DLQ itself. In-flight messages are counted against SQS's 120,000.
* **Lambda**: account concurrency (a call above it is throttled: 429, the Work state's Retry
  with backoff and full jitter, then its Catch ends the lane), cold starts for new containers,
  the 90 s timeout (a call whose task overruns it fails with States.Timeout; its message comes
  back after the visibility timeout), the worker's loop (tasks until 15 s or 1.5x the longest
  task are left, one long poll of 1 s when the queue is empty).
* **Step Functions**: a parent Standard execution per run (Plan, rounds of Map -> Progress ->
  Complete? -> Wait), children per lane (at most 10 calls), history events and state
  transitions of every execution, stop and restart of a parent (a new execution of the same run:
  the planner re-queues the tasks without a done marker; their duplicates are skipped by the
  worker's done-marker check).
* **The run's state**: done markers, dead markers (before the last try, final after it), the
  progress step's exact judgement (done + settled dead == task count), commit.

Approximate queue counts are not modelled because nothing in the design reads them.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from cubeless.cost import MAX_CALLS_PER_LANE, PRICES, WORKER_RESERVE_SECONDS, streak_pause

#: Quotas checked by every simulation.
HISTORY_LIMIT = 25_000  # events per Standard execution
SQS_IN_FLIGHT_LIMIT = 120_000  # in-flight messages per standard queue
PAYLOAD_LIMIT = 256 * 1024  # bytes of a state's input/output
MAP_CONCURRENCY_LIMIT = 10_000  # Distributed Map child executions at once


class DefinitionDrift(ValueError):
    """The state machine no longer has the shape the simulation models."""


@dataclass(frozen=True)
class Config:
    """What the simulation takes from the definition (and the stack's queue)."""

    max_concurrency: int
    worker_timeout: float
    retry_errors: tuple[str, ...]
    retry_attempts: int
    retry_interval: float
    retry_backoff: float
    retry_max_delay: float
    retry_jitter: bool
    catch_all: bool
    round_wait: float
    max_calls: int = MAX_CALLS_PER_LANE
    reserve: float = WORKER_RESERVE_SECONDS
    visibility_timeout: float = 180.0
    max_receives: int = 6
    retry_delay: float = 10.0  #: the worker's first backoff after a failed try (doubling)


def _walk(states: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, st in states.items():
        yield name, st
        if "ItemProcessor" in st:
            yield from _walk(st["ItemProcessor"]["States"])


def config_from_definition(definition: Mapping[str, Any], *, visibility_timeout: float = 180.0, max_receives: int = 6) -> Config:
    """The simulated configuration of a synthesized definition (raises :class:`DefinitionDrift`)."""
    states = definition["States"]
    maps = [(n, s) for n, s in states.items() if s["Type"] == "Map" and s.get("ItemProcessor", {}).get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"]
    if len(maps) != 1:
        raise DefinitionDrift(f"expected one Distributed Map in the parent, found {[n for n, _ in maps]}")
    map_name, m = maps[0]
    inner = m["ItemProcessor"]["States"]
    tasks = [(n, s) for n, s in inner.items() if s["Type"] == "Task"]
    if len(tasks) != 1:
        raise DefinitionDrift(f"expected one task state in a lane, found {[n for n, _ in tasks]}")
    work_name, work = tasks[0]
    choice = inner.get(work.get("Next", ""), {})
    if choice.get("Type") != "Choice" or not any(c.get("Next") == work_name for c in choice.get("Choices", [])):
        raise DefinitionDrift(f"the lane's {work_name} is not followed by a Choice that loops back to it")
    if inner.get(choice.get("Default", ""), {}).get("Type") != "Succeed":
        raise DefinitionDrift("the lane's loop does not end in a Succeed state")
    retries = work.get("Retry", [])
    if len(retries) != 1:
        raise DefinitionDrift(f"expected one Retrier on {work_name}, found {len(retries)}")
    r = retries[0]
    if any(e in ("States.ALL", "States.TaskFailed") for e in r["ErrorEquals"]):
        raise DefinitionDrift("the worker state retries task failures: the simulation models retries of Lambda service errors only")
    catch_all = any("States.ALL" in c["ErrorEquals"] for c in work.get("Catch", []))
    # The parent's round loop: Map -> ... -> Wait -> Map.
    waits = [s for s in states.values() if s["Type"] == "Wait" and s.get("Next") == map_name]
    if len(waits) != 1:
        raise DefinitionDrift(f"expected one Wait state leading back to {map_name}")
    after = states[m["Next"]]
    if after["Type"] != "Task":
        raise DefinitionDrift(f"{map_name} is not followed by the progress task")
    concurrency = int(m.get("MaxConcurrency", 0)) or MAP_CONCURRENCY_LIMIT
    return Config(
        max_concurrency=concurrency,
        worker_timeout=float(work["TimeoutSeconds"]),
        retry_errors=tuple(r["ErrorEquals"]),
        retry_attempts=int(r.get("MaxAttempts", 3)),
        retry_interval=float(r.get("IntervalSeconds", 1)),
        retry_backoff=float(r.get("BackoffRate", 2.0)),
        retry_max_delay=float(r.get("MaxDelaySeconds", 1e9)),
        retry_jitter=r.get("JitterStrategy") == "FULL",
        catch_all=catch_all,
        round_wait=float(waits[0]["Seconds"]),
        visibility_timeout=visibility_timeout,
        max_receives=max_receives,
    )


def config_from_template(template: Mapping[str, Any]) -> Config:
    """:func:`config_from_definition` of the template's state machine, with its task queue's
    visibility timeout and ``maxReceiveCount``."""
    import sys
    from pathlib import Path

    helpers = str(Path(__file__).resolve().parents[1] / "tests" / "infra")
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    from infra_helpers import definition  # the placeholder-ARN rendering of the infra tests

    (queue,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in r["Properties"]]
    return config_from_definition(
        definition(dict(template)),
        visibility_timeout=float(queue["VisibilityTimeout"]),
        max_receives=int(queue["RedrivePolicy"]["maxReceiveCount"]),
    )


# -- the scenario -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What happens to a run (or two) on the simulated deployment."""

    tasks: int
    task_seconds: float = 5.0
    task_jitter: float = 0.3  #: task time x uniform(1 - j, 1 + j)
    lanes: int = 900
    account_concurrency: int = 1000
    transient_rate: float = 0.0  #: chance a try fails for no lasting reason
    poison: int = 0  #: tasks that fail every try
    burst: tuple[float, float] | None = None  #: [start, end) seconds in which every try fails (S3 503s)
    runs: int = 1  #: runs started at once on the one queue, ``tasks`` each
    stop_at: float | None = None  #: the parent of run 0 is stopped at this time ...
    restart_after: float = 60.0  #: ... and started again this long after
    cold_start: float = 2.0
    plan_seconds: float = 120.0
    enqueue_rate: float = 3000.0  #: tasks queued per second by the planner
    progress_seconds: float = 2.0
    commit_seconds: float = 10.0
    seed: int = 0


@dataclass
class Msg:
    task: int  #: global task number (run * tasks + i)
    receives: int = 0
    visible_at: float = 0.0
    version: int = 0  #: bumped at each receive (stale heap entries are skipped)
    gone: bool = False


@dataclass
class Execution:
    """A Step Functions execution: history events and state transitions."""

    kind: str
    events: int = 2  # ExecutionStarted, ExecutionSucceeded/Aborted
    transitions: int = 0


@dataclass
class Result:
    """What a simulation measured."""

    seconds_to_cube: list[float]  #: per run: from start to commit
    ideal_seconds: float  #: tasks x task time / concurrency + planning + commit (of one run)
    utilisation: float  #: busy task seconds / (lanes x worker phase)
    transitions: int
    worker_calls: int
    worker_gb_seconds: float
    largest_history: int
    executions: int
    max_in_flight: int
    max_concurrency: int
    throttles: int
    tries_failed: int
    done: set[int]
    dead: set[int]
    dlq: set[int]
    duplicates: int  #: task executions beyond the first that finished (at-least-once: the same bytes again)
    committed: list[bool]
    tasks_total: int
    largest_payload: int
    paused_seconds: float = 0.0  #: worker seconds spent pausing after streaks of failed tries

    @property
    def step_functions_usd_per_1000(self) -> float:
        return self.transitions * PRICES.state_transition / self.tasks_total * 1000

    @property
    def time_ratio(self) -> float:
        return max(self.seconds_to_cube) / self.ideal_seconds


class Simulation:
    """Runs one :class:`Scenario` on a :class:`Config`; call :meth:`run`."""

    def __init__(self, config: Config, scenario: Scenario) -> None:
        self.c, self.s = config, scenario
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self._events: list[tuple[float, int, Any, tuple]] = []
        self._seq = 0
        n = scenario.tasks * scenario.runs
        self.msgs: list[Msg] = []
        self.visible: list[tuple[float, int, int]] = []  # (visible_at, msg index, version)
        self.in_flight = 0
        self.max_in_flight = 0
        self.streak: dict[int, list[int]] = {}  #: per lane (child): [failed tries in a row, the streak paused for]
        self.paused_seconds = 0.0  #: worker seconds spent in pauses after failure streaks
        self.task_time = [scenario.task_seconds * self.rng.uniform(1 - scenario.task_jitter, 1 + scenario.task_jitter) for _ in range(n)]
        self.poison = set(self.rng.sample(range(n), scenario.poison)) if scenario.poison else set()
        self.done: set[int] = set()
        self.successes = [0] * n
        self.dead_final: set[int] = set()
        self.dead_marker_at: dict[int, float] = {}
        self.dlq: set[int] = set()
        self.tries_failed = 0
        self.busy_task_seconds = 0.0
        self.concurrent = 0
        self.max_concurrent = 0
        self.throttles = 0
        self.warm = 0  # idle warm containers
        self.calls = 0
        self.gb_seconds = 0.0
        self.executions: list[Execution] = []
        self.run_done_at: list[float | None] = [None] * scenario.runs
        self.committed = [False] * scenario.runs
        self.run_started = [0.0] * scenario.runs
        self.generation = [0] * scenario.runs  # the current parent execution of each run
        self.worker_phase: list[float] = [0.0, 0.0]
        self.largest_payload = 0

    # -- event loop ---------------------------------------------------------------------------
    def at(self, t: float, fn: Any, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn, args))

    def run(self, limit: float = 30 * 86400) -> Result:
        for r in range(self.s.runs):
            self.at(0.0, self.start_parent, r)
        if self.s.stop_at is not None:
            self.at(self.s.stop_at, self.stop_parent, 0)
        while self._events:
            t, _, fn, args = heapq.heappop(self._events)
            if t > limit:
                raise RuntimeError(f"the simulation did not finish within {limit:.0f} s")
            self.now = t
            fn(*args)
        return self.result()

    # -- SQS ----------------------------------------------------------------------------------------
    def send(self, task: int) -> None:
        self.msgs.append(Msg(task=task, visible_at=self.now))
        heapq.heappush(self.visible, (self.now, len(self.msgs) - 1, 0))

    def receive(self) -> int | None:
        """A visible message's index (received: invisible for the visibility timeout), or None."""
        while self.visible and self.visible[0][0] <= self.now:
            _, i, version = heapq.heappop(self.visible)
            m = self.msgs[i]
            if m.gone or m.version != version:
                continue
            if m.receives > 0:
                self.in_flight -= 1  # it came back: no longer in flight
            if m.receives >= self.c.max_receives:  # SQS's redrive on receive
                m.gone = True
                self.dlq.add(m.task)
                continue
            m.receives += 1
            m.version += 1
            m.visible_at = self.now + self.c.visibility_timeout
            heapq.heappush(self.visible, (m.visible_at, i, m.version))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return i
        return None

    def delete(self, i: int) -> None:
        m = self.msgs[i]
        if not m.gone:
            m.gone = True
            self.in_flight -= 1

    def change_visibility(self, i: int, seconds: float) -> None:
        m = self.msgs[i]
        m.version += 1
        m.visible_at = self.now + seconds
        heapq.heappush(self.visible, (m.visible_at, i, m.version))

    # -- the parent execution --------------------------------------------------------------------
    def start_parent(self, run: int) -> None:
        ex = Execution("parent")
        self.executions.append(ex)
        gen = self.generation[run] = self.generation[run] + 1
        ex.transitions += 2  # Plan, Anything to do?
        ex.events += 5 + 2
        base = run * self.s.tasks
        todo = [base + i for i in range(self.s.tasks) if base + i not in self.done]
        for t in todo:  # a resumed run's re-queued tasks lose their dead markers
            self.dead_marker_at.pop(t, None)
            self.dead_final.discard(t)
        enqueue = len(todo) / self.s.enqueue_rate
        plan = self.s.plan_seconds if gen == 1 else self.s.plan_seconds / 10  # resumed: the task list is in the store
        for k, t in enumerate(todo):
            self.at(self.now + plan + k / self.s.enqueue_rate, self.send, t)
        self.at(self.now + plan + enqueue, self.start_round, run, gen, ex, min(self.s.lanes, max(1, len(todo))), {"settled": -1, "stalled": 0})

    def stop_parent(self, run: int) -> None:
        self.generation[run] += 1  # the running execution's lanes make no further calls
        self.at(self.now + self.s.restart_after, self.start_parent, run)

    def start_round(self, run: int, gen: int, ex: Execution, lanes: int, prog: dict) -> None:
        if gen != self.generation[run]:
            return
        ex.transitions += 1
        ex.events += 6  # MapStateEntered, MapStateStarted, MapRunStarted, MapRunSucceeded, MapStateSucceeded, MapStateExited
        self.largest_payload = max(self.largest_payload, len(str(list(range(lanes)))) + 2000)
        lanes = min(lanes, self.c.max_concurrency)
        state = {"open": lanes}
        for lane in range(lanes):
            child = Execution("lane")
            self.executions.append(child)
            self.at(self.now + 0.5 + lane * 0.001, self.call, run, gen, ex, child, state, prog, 0, 0)

    def lane_done(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict) -> None:
        child.transitions += 1
        child.events += 2
        state["open"] -= 1
        if state["open"] == 0:
            self.at(self.now + 1.0, self.progress, run, gen, ex, prog)

    def progress(self, run: int, gen: int, ex: Execution, prog: dict) -> None:
        if gen != self.generation[run]:
            return
        ex.transitions += 2  # Progress, Complete?
        ex.events += 5 + 2
        base = run * self.s.tasks
        ids = range(base, base + self.s.tasks)
        done = sum(1 for t in ids if t in self.done)
        dead = sum(
            1 for t in ids if t not in self.done and t in self.dead_marker_at
            and (t in self.dead_final or self.now - self.dead_marker_at[t] > self.c.visibility_timeout)
        )
        remaining = self.s.tasks - done - dead
        t_done = self.now + self.s.progress_seconds
        if remaining == 0:
            ex.transitions += 2  # Commit, Committed
            ex.events += 5 + 2
            self.at(t_done + self.s.commit_seconds, self.commit, run, dead)
            return
        ex.transitions += 1  # Next round
        ex.events += 2
        self.at(t_done + self.c.round_wait, self.start_round, run, gen, ex, min(self.s.lanes, remaining), prog)

    def commit(self, run: int, dead: int) -> None:
        self.run_done_at[run] = self.now
        self.committed[run] = dead == 0

    # -- a lane's worker calls ------------------------------------------------------------------------
    def call(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict, calls: int, attempt: int) -> None:
        if gen != self.generation[run]:  # the parent was stopped: the child is aborted
            state["open"] -= 1
            return
        if attempt == 0:
            child.transitions += 1  # Work
            child.events += 5
        if self.concurrent >= self.s.account_concurrency:  # 429: the Work state's Retry
            self.throttles += 1
            child.events += 3
            if attempt + 1 >= self.c.retry_attempts:
                self.lane_done(run, gen, ex, child, state, prog)  # caught: the lane ends, the next round restarts it
                return
            delay = min(self.c.retry_interval * self.c.retry_backoff**attempt, self.c.retry_max_delay)
            if self.c.retry_jitter:
                delay = self.rng.uniform(0, delay)
            self.at(self.now + delay, self.call, run, gen, ex, child, state, prog, calls, attempt + 1)
            return
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.calls += 1
        if self.worker_phase[0] == 0.0:
            self.worker_phase[0] = self.now
        cold = 0.0
        if self.warm > 0:
            self.warm -= 1
        else:
            cold = self.s.cold_start
        self.streak[id(child)] = [0, 0]  # failed tries in a row in this call, the streak last paused for
        self.at(self.now + cold, self.call_loop, run, gen, ex, child, state, prog, calls, self.now, 0.0)

    def call_loop(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict, calls: int, started: float, longest: float) -> None:
        left = self.c.worker_timeout - (self.now - started)
        floor = max(self.c.reserve, 1.5 * longest)
        streak = self.streak[id(child)]
        pause = streak_pause(streak[0]) if streak[0] != streak[1] else 0.0
        if pause and left > floor:  # the worker's pause after a streak of failed tries
            streak[1] = streak[0]
            if left - pause > floor:
                self.paused_seconds += pause
                self.at(self.now + pause, self.call_loop, run, gen, ex, child, state, prog, calls, started, longest)
                return
            self.end_call(run, gen, ex, child, state, prog, calls, started, False)
            return
        if left > floor:
            i = self.receive()
            if i is not None:
                self.execute(run, gen, ex, child, state, prog, calls, started, longest, i)
                return
            self.at(self.now + 1.0, self.end_call, run, gen, ex, child, state, prog, calls, started, True)  # the empty long poll
            return
        self.end_call(run, gen, ex, child, state, prog, calls, started, False)

    def execute(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict, calls: int, started: float, longest: float, i: int) -> None:
        m = self.msgs[i]
        task = m.task
        if task in self.done:  # a duplicate: one HEAD, deleted
            self.streak[id(child)][:] = [0, 0]
            self.delete(i)
            self.at(self.now + 0.02, self.call_loop, run, gen, ex, child, state, prog, calls, started, longest)
            return
        if m.receives >= self.c.max_receives:
            self.dead_marker_at[task] = self.now
        seconds = self.task_time[task]
        end = self.now + seconds
        if end - started > self.c.worker_timeout:  # Lambda kills the call: States.Timeout, caught
            self.busy_task_seconds += self.c.worker_timeout - (self.now - started)
            self.at(started + self.c.worker_timeout, self.timed_out, run, gen, ex, child, state, prog, started)
            return
        in_burst = self.s.burst is not None and self.s.burst[0] <= self.now < self.s.burst[1]
        fails = task in self.poison or in_burst or self.rng.random() < self.s.transient_rate
        if fails:
            seconds = min(seconds, 1.0 + seconds * 0.1)  # a failing read fails early
            end = self.now + seconds
        self.busy_task_seconds += seconds
        self.at(end, self.finish, run, gen, ex, child, state, prog, calls, started, max(longest, seconds), i, fails)

    def finish(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict, calls: int, started: float, longest: float, i: int, fails: bool) -> None:
        m = self.msgs[i]
        task = m.task
        if not fails:
            self.successes[task] += 1
            self.done.add(task)
            self.dead_marker_at.pop(task, None)
            self.dead_final.discard(task)
            self.delete(i)
        else:
            self.tries_failed += 1
            if m.receives >= self.c.max_receives:
                self.dead_marker_at[task] = self.now
                self.dead_final.add(task)
                self.dlq.add(task)  # the worker parks it at once
                self.delete(i)
            else:
                self.change_visibility(i, self.c.retry_delay * 2 ** (m.receives - 1))
        streak = self.streak[id(child)]
        if fails:
            streak[0] += 1
        else:
            streak[0] = streak[1] = 0
        self.call_loop(run, gen, ex, child, state, prog, calls, started, longest)

    def timed_out(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict, started: float) -> None:
        self.concurrent -= 1
        self.gb_seconds += 2.0 * (self.now - started)
        child.events += 3
        self.lane_done(run, gen, ex, child, state, prog)

    def end_call(self, run: int, gen: int, ex: Execution, child: Execution, state: dict, prog: dict, calls: int, started: float, drained: bool) -> None:
        self.concurrent -= 1
        self.warm += 1
        self.gb_seconds += 2.0 * (self.now - started)
        self.worker_phase[1] = max(self.worker_phase[1], self.now)
        calls += 1
        child.transitions += 1  # More?
        child.events += 2
        if not drained and calls < self.c.max_calls and gen == self.generation[run]:
            self.at(self.now + 0.05, self.call, run, gen, ex, child, state, prog, calls, 0)
        else:
            self.lane_done(run, gen, ex, child, state, prog)

    # -- result ----------------------------------------------------------------------------------------
    def result(self) -> Result:
        s = self.s
        n = s.tasks * s.runs
        dead = {t for t in range(n) if t not in self.done and t in self.dead_marker_at}
        phase = max(1e-9, self.worker_phase[1] - self.worker_phase[0])
        ideal = s.tasks * s.runs * s.task_seconds / min(s.lanes * s.runs, s.account_concurrency) + s.plan_seconds + s.tasks / s.enqueue_rate + s.commit_seconds
        transitions = sum(e.transitions for e in self.executions)
        return Result(
            seconds_to_cube=[t or math.inf for t in self.run_done_at],
            ideal_seconds=ideal,
            utilisation=self.busy_task_seconds / (min(s.lanes * s.runs, s.account_concurrency) * phase),
            transitions=transitions,
            worker_calls=self.calls,
            worker_gb_seconds=self.gb_seconds,
            largest_history=max(e.events for e in self.executions),
            executions=len(self.executions),
            max_in_flight=self.max_in_flight,
            max_concurrency=self.max_concurrent,
            throttles=self.throttles,
            tries_failed=self.tries_failed,
            done=set(self.done),
            dead=dead,
            dlq=set(self.dlq),
            duplicates=sum(max(0, k - 1) for k in self.successes),
            committed=list(self.committed),
            tasks_total=n,
            largest_payload=self.largest_payload,
            paused_seconds=self.paused_seconds,
        )


def simulate(config: Config, scenario: Scenario) -> Result:
    return Simulation(config, scenario).run()


def check(result: Result, scenario: Scenario) -> list[str]:
    """Broken promises of a simulated run (empty when every one holds)."""
    problems = []
    n = scenario.tasks * scenario.runs
    if result.done | result.dead != set(range(n)):
        problems.append(f"{n - len(result.done | result.dead)} tasks neither done nor dead-lettered")
    if result.done & result.dead:
        problems.append(f"{len(result.done & result.dead)} tasks both done and dead")
    if not result.dead <= result.dlq:
        problems.append(f"{len(result.dead - result.dlq)} dead tasks are not in the DLQ")
    if result.largest_history > HISTORY_LIMIT:
        problems.append(f"an execution wrote {result.largest_history} history events (> {HISTORY_LIMIT})")
    if result.max_in_flight > SQS_IN_FLIGHT_LIMIT:
        problems.append(f"{result.max_in_flight} messages in flight (> {SQS_IN_FLIGHT_LIMIT})")
    if result.max_concurrency > scenario.account_concurrency:
        problems.append(f"{result.max_concurrency} concurrent worker calls (> {scenario.account_concurrency})")
    if result.largest_payload > PAYLOAD_LIMIT:
        problems.append(f"a state of {result.largest_payload} bytes (> {PAYLOAD_LIMIT})")
    if any(math.isinf(t) for t in result.seconds_to_cube):
        problems.append("a run never reached its commit")
    return problems
