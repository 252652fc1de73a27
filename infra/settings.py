"""Deployment settings: one typed object, every field with its default.

Values come, strongest first, from the CDK context key ``cubeless`` (``cdk.json`` or
``-c cubeless='{"lanes": 40}'``), then ``CUBELESS_*`` environment variables (``CUBELESS_LANES=40``;
lists and objects as JSON), then the defaults below.

Example::

    >>> Settings(lanes=40).worker_memory_mb
    2048
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cubeless.errors import SpecError
from cubeless.hrefs import SENTINEL2_COG_HOSTS
from cubeless.spec import parse_spec

#: Stands for the stack's bucket name in a schedule's spec (``store: s3://{bucket}/cubes/x.zarr``).
BUCKET_PLACEHOLDER = "{bucket}"

#: Where Sentinel-2 L2A scenes and their catalog live (Element 84 Earth Search, AWS open data).
DEFAULT_STAC_HOSTS: tuple[str, ...] = ("earth-search.aws.element84.com", *SENTINEL2_COG_HOSTS)


RETENTION_DAYS = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}


class ScheduleSettings(BaseModel):
    """One EventBridge Scheduler schedule that starts the state machine with a spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Schedule name, unique in the stack (letters, digits, ``-_.``).
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,48}$")
    #: ``cron(...)``, ``rate(...)`` or ``at(...)`` in EventBridge Scheduler syntax.
    expression: str
    #: The cube spec (as in a spec file); ``{bucket}`` in ``store`` becomes the stack's bucket.
    spec: dict[str, Any]
    #: Deployed disabled unless true.
    enabled: bool = False
    #: Lanes for runs this schedule starts (default: the stack's ``lanes``).
    lanes: int | None = Field(None, ge=1)
    #: Cut the spec's ``end`` to the last bin complete at the scheduled time, so a monthly schedule
    #: extends the cube with the month that just ended and never with a partial one.
    complete_bins_only: bool = True
    timezone: str = "UTC"
    description: str = ""

    @field_validator("expression")
    @classmethod
    def _expression(cls, v: str) -> str:
        if not re.match(r"^(cron|rate|at)\(.+\)$", v.strip()):
            raise ValueError(f"{v!r} is not a schedule expression; use e.g. cron(0 6 3 * ? *) or rate(7 days)")
        return v.strip()

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Check the spec at synth time, not at 06:00 on the 3rd of next month.
        doc = dict(v)
        if isinstance(doc.get("store"), str):
            doc["store"] = doc["store"].replace(BUCKET_PLACEHOLDER, "bucket")
        try:
            parse_spec(doc)
        except SpecError as err:
            raise ValueError(str(err)) from None
        return v


def _example_schedule() -> ScheduleSettings:
    """Disabled example: on the 3rd of every month, extend a small cube with the month that ended."""
    return ScheduleSettings(
        name="example-monthly",
        expression="cron(0 6 3 * ? *)",
        enabled=False,
        description="Example (disabled): extend the example cube with the last complete month.",
        spec={
            "name": "example",
            "bbox": [-72.6, 44.2, -72.4, 44.4],
            "start": "2024-01-01",
            "end": "2099-12-31",
            "interval": "month",
            "store": "s3://{bucket}/cubes/example.zarr",
        },
    )


class Settings(BaseSettings):
    """Everything a deployment can choose. Construct with :meth:`from_context` in ``app.py``."""

    model_config = SettingsConfigDict(env_prefix="CUBELESS_", extra="forbid", frozen=True)

    #: CloudFormation stack name.
    stack_name: str = Field("cubeless", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
    #: Use this existing bucket for cubes instead of creating one (the stack then only grants on it).
    bucket_name: str | None = None
    #: Keep the created bucket (and its cubes) when the stack is deleted.
    retain_bucket: bool = True
    #: Lanes per run unless the execution input asks otherwise: each lane is one worker invocation
    #: at a time, so this is the run's worker concurrency. 900 leaves 100 of the default Lambda
    #: account concurrency (1,000) to the planner, progress and commit functions and to other runs.
    lanes: int = Field(900, ge=1)
    #: Most lanes one run may use (the Distributed Map's MaxConcurrency; caps the input's ``lanes``).
    #: Above 1,000, raise the account's Lambda concurrency quota first (Distributed Map allows 10,000).
    max_lanes: int = Field(1000, ge=1, le=10_000)
    #: Longest a run's execution may take (the state machine's timeout, hours). Its cube lock
    #: expires then too, even if Step Functions cannot be asked whether the execution still runs.
    run_timeout_hours: int = Field(168, ge=1, le=8760)
    #: Share of lanes allowed to fail before the Map fails; the commit step judges the tasks anyway.
    tolerated_failure_percentage: float = Field(100.0, ge=0, le=100)
    #: Worker memory (MB); Lambda gives CPU in proportion (1,769 MB = one vCPU).
    worker_memory_mb: int = Field(2048, ge=512, le=10_240)
    #: Worker ephemeral storage (MB).
    worker_ephemeral_mb: int = Field(1024, ge=512, le=10_240)
    #: Planner memory (MB), from ``make bench`` 4d/4g: the Brazil-year plan (~145,000 items, task
    #: list written) peaked at 1.23 GB RSS at 30 m (134,000 tasks) and 2.52 GB at 10 m (1.19 million
    #: tasks); 4,096 MB is 1.6x the 10 m peak (3.3x at 30 m) and ~2.3 vCPU. Its timeout is Lambda's
    #: 15 minutes: those plans took 39 s and 63 s here (the real API's 1-3 s pages, 12 partitions
    #: 8 at a time: ~1-2 minutes of search), so about 7x headroom.
    planner_memory_mb: int = Field(4096, ge=256, le=10_240)
    #: Commit (and progress) memory (MB), from bench 9c/9d at 100,000 forks (``python -m bench
    #: --only 9 --icechunk-forks 100000``, or ``python -m bench.icechunk --forks 100000``): merging an Icechunk run of 100,000 tasks' change sets (67.6 MB
    #: of forks, 673 bytes each) and committing it peaked at 229 MB RSS (92 MB after imports) in
    #: 3.5 s; 1,024 MB is 4.5x that peak, room for listing the run's 100,000 done markers (bench 5)
    #: and the Zarr format's pyramid reduction (4 threads over one bin's chunks, bench 8b).
    commit_memory_mb: int = Field(1024, ge=256, le=10_240)
    #: CPU architecture of every function (and of the layer and image built for them).
    architecture: Literal["arm64", "x86_64"] = "arm64"
    #: Hosts scene assets and the STAC API may be read from; anything else fails before any read.
    stac_hosts: tuple[str, ...] = DEFAULT_STAC_HOSTS
    #: GDAL settings of the worker (reading cloud-optimized GeoTIFFs over HTTPS).
    gdal_env: dict[str, str] = Field(
        default_factory=lambda: {
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
            "GDAL_HTTP_MULTIPLEX": "YES",
            "GDAL_HTTP_VERSION": "2",
            "GDAL_HTTP_MAX_RETRY": "4",
            "GDAL_HTTP_RETRY_DELAY": "1",
            "GDAL_CACHEMAX": "200",
            "VSI_CACHE": "TRUE",
            "VSI_CACHE_SIZE": "50000000",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff",
        }
    )
    #: The tile function's Function URL without authentication (AuthType NONE) instead of AWS_IAM.
    #: Trade-off: anyone who has the URL reads every cube in the bucket (tiles, points, the catalog:
    #: every cube's store, extent, bins and last run), and every request is a Lambda invocation and
    #: S3 reads billed to this account, so a crawler or a leaked link costs money; cap it with
    #: ``tiles_max_concurrency``. Private (the default), ``cubeless view`` signs each request with
    #: the viewer's credentials, which need ``lambda:InvokeFunctionUrl`` (and ``InvokeFunction``).
    tiles_public: bool = False
    #: Tile function memory (MB): one tile reads a few chunks per band and renders a 256 px PNG.
    tiles_memory_mb: int = Field(1024, ge=256, le=10_240)
    #: Reserved concurrency of the tile function (none: the account's unreserved pool). Caps what a
    #: public URL can cost; each reserved execution is taken from the account's pool for the workers.
    tiles_max_concurrency: int | None = Field(None, ge=1)
    #: Scheduled runs; the default is one disabled example.
    schedules: tuple[ScheduleSettings, ...] = Field(default_factory=lambda: (_example_schedule(),))
    #: CloudWatch Logs retention of every log group (days; one of the values CloudWatch offers).
    log_retention_days: int = 30
    #: An existing SNS topic the alarms notify (none: alarms only change state).
    alarm_topic_arn: str | None = None
    #: A prebuilt layer zip to use instead of building one (tests use a small placeholder).
    layer_zip: str | None = None

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        if v not in RETENTION_DAYS:
            raise ValueError(f"{v} is not a CloudWatch Logs retention; use one of {sorted(RETENTION_DAYS)}")
        return v

    @model_validator(mode="after")
    def _whole(self) -> "Settings":
        if self.lanes > self.max_lanes:
            raise ValueError(f"lanes ({self.lanes}) is above max_lanes ({self.max_lanes}); raise max_lanes or lower lanes")
        names = [s.name for s in self.schedules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"schedule names must be unique, repeated: {dupes}")
        return self

    @classmethod
    def from_context(cls, node: Any) -> "Settings":
        """Settings from a construct node's context key ``cubeless`` over env vars and defaults."""
        ctx = node.try_get_context("cubeless") or {}
        if isinstance(ctx, str):  # -c cubeless='{"lanes": 4}' arrives as text
            import json

            ctx = json.loads(ctx)
        return cls(**ctx)
