"""Deployment settings: documented defaults, context over environment, one-line refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.schedules import SCHEDULED_TIME, schedule_input
from infra.settings import DEFAULT_STAC_HOSTS, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("CUBELESS_")]:
        monkeypatch.delenv(name)


class Node:
    def __init__(self, ctx: object) -> None:
        self.ctx = ctx

    def try_get_context(self, key: str) -> object:
        return self.ctx if key == "cubeless" else None


def test_defaults() -> None:
    s = Settings()
    assert (s.stack_name, s.bucket_name, s.lanes, s.max_lanes) == ("cubeless", None, 900, 1000)
    assert (s.worker_memory_mb, s.architecture, s.stac_hosts) == (2048, "arm64", DEFAULT_STAC_HOSTS)
    assert (s.tiles_public, s.tiles_memory_mb, s.tiles_max_concurrency) == (False, 1024, None)  # the map is private
    (example,) = s.schedules
    assert example.enabled is False and example.complete_bins_only and example.spec["store"].startswith("s3://{bucket}/")


def test_context_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBELESS_LANES", "7")
    monkeypatch.setenv("CUBELESS_ARCHITECTURE", "x86_64")
    monkeypatch.setenv("CUBELESS_SCHEDULES", "[]")
    assert (Settings().lanes, Settings().architecture, Settings().schedules) == (7, "x86_64", ())
    s = Settings.from_context(Node({"lanes": 3}))
    assert (s.lanes, s.architecture) == (3, "x86_64")
    assert Settings.from_context(Node('{"max_lanes": 9, "lanes": 9}')).max_lanes == 9  # -c cubeless='{...}'


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lanes": 50, "max_lanes": 10}, "lanes \\(50\\) is above max_lanes \\(10\\)"),
        ({"architecture": "riscv"}, "arm64"),
        ({"log_retention_days": 31}, "not a CloudWatch Logs retention"),
        ({"lanse": 3}, "Extra inputs are not permitted"),
        ({"schedules": [{"name": "x", "expression": "every monday", "spec": {}}]}, "not a schedule expression"),
        (
            {"schedules": [{"name": "x", "expression": "rate(1 day)", "spec": {"name": "x", "bbox": [0, 0, 1, 1], "start": "2020-01-01"}}]},
            "spec field `end` is required",
        ),
    ],
)
def test_bad_settings_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(**kw)


def test_schedule_input_fills_the_bucket_and_the_firing_time() -> None:
    (example,) = Settings().schedules
    payload = schedule_input(example, "my-bucket")
    assert payload["spec"]["store"] == "s3://my-bucket/cubes/example.zarr"
    assert payload["as_of"] == SCHEDULED_TIME and "lanes" not in payload
    assert example.spec["store"] == "s3://{bucket}/cubes/example.zarr"  # the settings are untouched
