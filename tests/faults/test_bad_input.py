"""Issue 4, scenario 8: malformed specs and inputs through the real command line.

For every case: exit code 2, exactly one line on stderr that names the problem and the fix, no
traceback, and nothing written (the spec's store does not exist afterwards). The cases run
concurrently, once per test run (a session fixture shared by the xdist workers through a file),
and each is reported as its own test.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from tests.faults.conftest import CUBELESS, exclusive, spec_doc

pytestmark = pytest.mark.xdist_group("faults-input")

#: A line "names the fix" when it tells the user what to do, or states the rule the input must
#: follow ("longitudes must be within -180..180; bbox is [west, south, east, north] in degrees").
FIX = re.compile(r"\b(use|add|give|remove|fix|check|split|swap|write|save|put|choose|raise|set|see|list|leave|start|wait|must)\b")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Case:
    id: str
    command: str  #: validate | plan | run (`run --local`) | run-nolocal | none (only ``args``)
    edit: Callable[[dict[str, Any], Path], Any] | None = None  #: edits the spec doc (or returns raw file content)
    expect: str = ""  #: a fragment the error line must contain
    args: tuple[str, ...] = ()
    spec_path: Callable[[Path], Path] | None = None  #: a spec path other than the written one
    env: dict[str, str | None] | None = None  #: environment changes (None: the variable is removed)
    argv: Callable[[Path], list[str]] | None = None  #: the whole command line, made in the case's folder


def _set(**kw: Any) -> Callable[[dict[str, Any], Path], None]:
    def edit(doc: dict[str, Any], _tmp: Path) -> None:
        doc.update(kw)
    return edit


def _drop(*keys: str, **kw: Any) -> Callable[[dict[str, Any], Path], None]:
    def edit(doc: dict[str, Any], _tmp: Path) -> None:
        for k in keys:
            doc.pop(k)
        doc.update(kw)
    return edit


def _aoi(content: str | dict[str, Any] | None) -> Callable[[dict[str, Any], Path], None]:
    """Replace the bbox by an AOI file with ``content`` (None: a path that does not exist)."""
    def edit(doc: dict[str, Any], tmp: Path) -> None:
        path = tmp / "aoi.geojson"
        if content is not None:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        doc.pop("bbox")
        doc["aoi"] = str(path)
    return edit


def _raw(text: str | bytes) -> Callable[[dict[str, Any], Path], str | bytes]:
    return lambda _doc, _tmp: text


#: An environment with no AWS credentials anywhere (nor instance metadata to ask).
NO_AWS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
          "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
          "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": None, "AWS_ENDPOINT_URL_S3": None}


def _aws(**kw: str | None) -> dict[str, str | None]:
    """NO_AWS with ``kw`` on top (e.g. fake credentials and an endpoint)."""
    return {**NO_AWS, **kw}


def _fake_keys(endpoint: str) -> dict[str, str | None]:
    return _aws(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=endpoint)


def _small_cube(tmp: Path, bands: tuple[str, ...] = ("red", "green", "blue")) -> str:
    """A two-step (2024-05, 2024-07) RGB Zarr for the preview cases (preview reads any such cube)."""
    import numpy as np
    import xarray as xr

    ds = xr.Dataset(
        {b: (("time", "y", "x"), np.full((2, 8, 8), 1000, np.uint16)) for b in bands},
        coords={"time": np.array(["2024-05-01", "2024-07-01"], dtype="datetime64[ns]"),
                "y": 5_140_000 - 20.0 * np.arange(8), "x": 270_000 + 20.0 * np.arange(8)},
    )
    path = str(tmp / "small.zarr")
    ds.to_zarr(path, zarr_format=3, consolidated=True)
    return path


def _preview(time: str, *, bands: tuple[str, ...] = ("red", "green", "blue"), store: bool = True) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        where = _small_cube(tmp, bands) if store else str(tmp / "no-cube-here.zarr")
        return ["preview", where, "--time", time, "--out", str(tmp / "preview.png")]
    return argv


ANTIMERIDIAN = {"type": "Polygon", "coordinates": [[[179.5, -17], [-179.5, -17], [-179.5, -16], [179.5, -16], [179.5, -17]]]}

CASES = [
    Case("bbox-out-of-range", "validate", _set(bbox=[200, 46, 201, 47]), "longitudes must be within -180..180"),
    Case("bbox-inverted-lat", "validate", _set(bbox=[6.0, 46.4, 6.1, 46.3]), "bbox is [west, south, east, north]"),
    Case("bbox-antimeridian", "validate", _set(bbox=[179.5, -17, -179.5, -16]), "crossing the antimeridian"),
    Case("bbox-3-numbers", "validate", _set(bbox=[6.0, 46.3, 6.1]), "`bbox` has too few items; give [west, south, east, north]"),
    Case("bbox-5-numbers", "validate", _set(bbox=[6.0, 46.3, 6.1, 46.4, 0]), "`bbox` has too many items"),
    Case("bbox-not-a-list", "validate", _set(bbox="6,46,7,47"), "spec field `bbox`"),
    Case("start-after-end", "validate", _set(start="2024-06-01", end="2024-05-01"), "is after end"),
    Case("impossible-date", "validate", _set(end="2024-02-30"), "spec field `end`"),
    Case("month-13-in-yaml", "validate", _raw("name: x\nbbox: [6.0, 46.3, 6.1, 46.4]\nstart: 2024-01-01\nend: 2024-13-01\nstore: x.zarr\n"), "invalid date (month must be in 1..12); give dates as YYYY-MM-DD"),
    Case("bands-empty", "validate", _set(bands=[]), "e.g. [red, green, blue]"),
    Case("band-unknown", "plan", _set(bands=["red", "nir09"]), "band 'nir09' not in collection assets [blue, green, red, scl]"),
    Case("band-unknown-run", "run", _set(bands=["red", "nir09"]), "fix `bands`"),
    Case("scl-as-band", "validate", _set(bands=["red", "scl"]), "`scl` is the mask band"),
    Case("resolution-zero", "validate", _set(resolution=0), "spec field `resolution`"),
    Case("resolution-negative", "validate", _set(resolution=-0.001), "spec field `resolution`"),
    Case("resolution-metres-in-degrees", "validate", _set(resolution=30), "is in degrees for EPSG:4326"),
    Case("chunk-too-small", "validate", _set(chunk=8), "use 64..4096 pixels"),
    Case("chunk-too-large", "validate", _set(chunk=100_000), "use 64..4096 pixels"),
    Case("crs-unknown", "validate", _set(crs="EPSG:999999"), "is not a CRS pyproj knows"),
    Case("interval-unknown", "validate", _set(interval="fortnight"), "use week, month, quarter or year"),
    Case("field-unknown", "validate", _set(colour="red"), "spec field `colour` is not known"),
    Case("field-misspelt", "validate", _drop("resolution", resolutoin=0.00027), "spec field `resolutoin` is not known; did you mean `resolution`?"),
    Case("missing-store", "validate", _drop("store"), "spec field `store` is required"),
    Case("missing-name", "validate", _drop("name"), "spec field `name` is required"),
    Case("missing-bbox-and-aoi", "validate", _drop("bbox"), "exactly one of `bbox` or `aoi`"),
    Case("mask-class-out-of-range", "validate", _set(mask={"scl_exclude": [12]}), "SCL classes are 0-11"),
    Case("cloud-cover-150", "validate", _set(max_cloud_cover=150), "use a percentage 0..100"),
    Case("aoi-missing-file", "plan", _aoi(None), "does not exist"),
    Case("aoi-missing-file-run", "run", _aoi(None), "does not exist"),
    Case("aoi-missing-file-validate", "validate", _aoi(None), "does not exist"),
    Case("aoi-not-json-validate", "validate", _aoi("this is { not json"), "is not JSON"),
    Case("aoi-a-point-validate", "validate", _aoi({"type": "Point", "coordinates": [6, 46]}), "only Polygon or MultiPolygon"),
    Case("world-at-10m-plan", "plan", _set(bbox=[-180, -90, 180, 90], start="2014-01-01", end="2024-12-31", resolution=0.00009, chunk=1200),
         "over max_tasks 200,000; split the spec"),
    Case("world-at-10m-run", "run", _set(bbox=[-180, -90, 180, 90], start="2014-01-01", end="2024-12-31", resolution=0.00009, chunk=1200),
         "over max_tasks 200,000; split the spec"),
    Case("stac-host-unresolvable", "plan", _set(stac_api="http://no-such-host.invalid/v1"), "name or service not known"),
    Case("aoi-not-json", "run", _aoi("this is { not json"), "is not JSON"),
    Case("aoi-a-point", "plan", _aoi({"type": "Point", "coordinates": [6, 46]}), "only Polygon or MultiPolygon"),
    Case("aoi-antimeridian", "plan", _aoi(ANTIMERIDIAN), "crosses the antimeridian"),
    Case("too-many-tasks", "run", None, "over max_tasks 2", args=("--max-tasks", "2")),
    Case("too-many-tasks-plan", "plan", None, "over max_tasks 2", args=("--max-tasks", "2")),
    Case("name-unsafe", "validate", _set(name="My Cube!"), "is not a safe name"),
    Case("name-path-traversal", "validate", _set(name="../etc"), "is not a safe name"),
    Case("stac-not-a-url", "validate", _set(stac_api="not a url"), "is not an http(s) URL"),
    Case("stac-unreachable", "plan", lambda d, t: d.update(stac_api=f"http://127.0.0.1:{_closed_port()}"), "is unreachable"),
    Case("stac-unreachable-run", "run", lambda d, t: d.update(stac_api=f"http://127.0.0.1:{_closed_port()}"), "is unreachable"),
    Case("collection-unknown", "run", _set(collection="sentinel-3"), "collection 'sentinel-3' not found"),
    Case("store-unwritable-run", "run", _set(store="/proc/cubeless-bad-input.zarr"), "is not writable"),
    Case("store-unwritable-plan", "plan", _set(store="/proc/cubeless-bad-input.zarr"), "is not writable"),
    Case("store-under-a-file-plan", "plan", lambda d, t: (t / "f").write_text("x") and d.update(store=str(t / "f" / "c.zarr")), "which is a file"),
    Case("store-s3-no-credentials-run", "run", _set(store="s3://cubeless-bad-input/cube.zarr"), "no AWS credentials found", env=NO_AWS),
    Case("store-s3-no-credentials-plan", "plan", _set(store="s3://cubeless-bad-input/cube.zarr"), "no AWS credentials found", env=NO_AWS),
    Case("store-s3-endpoint-closed", "run", _set(store="s3://cubeless-bad-input/cube.zarr"), "is unreachable",
         env=_fake_keys(f"http://127.0.0.1:{_closed_port()}")),
    Case("store-s3-endpoint-unresolvable", "plan", _set(store="s3://cubeless-bad-input/cube.zarr"), "is unreachable",
         env=_fake_keys("http://no-such-host.invalid:9000")),
    Case("manifest-s3-no-credentials", "none", None, "no AWS credentials found",
         args=("manifest", "s3://cubeless-bad-input/cube.zarr"), env=NO_AWS),
    Case("preview-time-not-in-cube", "none", None, "no time step labelled '2024-06'; use one the cube has: 2024-05-01, 2024-07-01", argv=_preview("2024-06")),
    Case("preview-index-out-of-range", "none", None, "time index 5 is outside the cube's 2 time step(s); use 0..1", argv=_preview("5")),
    Case("preview-missing-store", "none", None, "holds no cube; check the store path", argv=_preview("0", store=False)),
    Case("preview-missing-band", "none", None, "the cube has no band 'blue'", argv=_preview("0", bands=("red", "green"))),
    Case("status-without-region", "none", None, "no AWS region configured; set AWS_DEFAULT_REGION",
         args=("status", "some-run"), env=_aws(AWS_DEFAULT_REGION=None, AWS_REGION=None)),
    Case("start-without-region", "start", None, "no AWS region configured; set AWS_DEFAULT_REGION",
         env=_aws(AWS_DEFAULT_REGION=None, AWS_REGION=None)),
    Case("store-is-a-file", "run", lambda d, t: (t / "a-file").write_text("x") and d.update(store=str(t / "a-file")), "is a file"),
    Case("spec-missing", "validate", None, "does not exist", spec_path=lambda t: t / "nowhere.yaml"),
    Case("spec-a-directory", "validate", None, "is a directory", spec_path=lambda t: t),
    Case("spec-empty", "run", _raw(""), "is empty"),
    Case("spec-only-blank-lines", "validate", _raw("  \n\n"), "is empty"),
    Case("spec-not-yaml", "validate", _raw("name: [unclosed\n  - x: {"), "is not valid YAML or JSON"),
    Case("spec-binary", "validate", _raw(b"\x00\xff\xfe\x89PNG binary"), "is not UTF-8 text"),
    Case("spec-a-list", "validate", _raw("- name\n- store\n"), "must be a YAML/JSON object"),
    Case("spec-a-number", "run", _raw("42\n"), "must be a YAML/JSON object"),
    Case("spec-oversized", "validate", _raw("# padding\n" * 30_000 + "name: x\n"), "over the 262144 byte limit"),
    # Options are input too.
    Case("run-without-local", "run-nolocal", None, "add --local"),
    Case("workers-zero", "run", None, "Invalid value for '--workers'", args=("--workers", "0")),
    Case("timeout-zero", "run", None, "Invalid value for '--timeout'", args=("--timeout", "0")),
    Case("retries-not-a-number", "run", None, "Invalid value for '--retries'", args=("--retries", "many")),
    Case("option-unknown", "run", None, "No such option: --frobnicate", args=("--frobnicate",)),
    Case("spec-argument-missing", "none", None, "Missing argument 'spec'", args=("validate",)),
]


@pytest.fixture(scope="session")
def outcomes(shared_dir: Path, stac: str, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every case's outcome, computed once per test run (whichever xdist worker comes first)."""
    root = shared_dir / "bad-input"

    def one(case: Case) -> tuple[str, dict[str, Any]]:
        tmp = root / case.id
        tmp.mkdir(parents=True)
        store = tmp / "cube.zarr"
        doc = spec_doc(stac, store, "may")
        body = case.edit(doc, tmp) if case.edit else None
        path = tmp / "spec.yaml"
        if isinstance(body, bytes):
            path.write_bytes(body)
        elif isinstance(body, str):
            path.write_text(body)
        else:
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if case.spec_path is not None:
            path = case.spec_path(tmp)
        args = {
            "run": ["run", str(path), "--local", "--workers", "1"],
            "run-nolocal": ["run", str(path)],
            "none": [],
        }.get(case.command, [case.command, str(path)])
        if case.argv is not None:
            args = case.argv(tmp)
        before = {p for p in tmp.rglob("*")}
        case_env = dict(env)
        for k, v in (case.env or {}).items():
            if v is None:
                case_env.pop(k, None)
            else:
                case_env[k] = v
        p = subprocess.run([CUBELESS, *args, *case.args], capture_output=True, text=True, env=case_env, timeout=300)
        written = Path(doc.get("store", store))
        return case.id, {
            "code": p.returncode, "stderr": p.stderr, "stdout": p.stdout,
            "store": str(written), "store_is_dir": written.is_dir(),
            "store_text": written.read_text() if written.is_file() else None,
            "new_files": sorted(str(p) for p in set(tmp.rglob("*")) - before),
        }

    cache = shared_dir / "bad-input.json"
    with exclusive(shared_dir / "bad-input.lock"):
        if not cache.exists():
            shutil.rmtree(root, ignore_errors=True)
            with ThreadPoolExecutor(4) as pool:
                cache.write_text(json.dumps(dict(pool.map(one, CASES))))
        return dict(json.loads(cache.read_text()))


def test_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input(outcomes: dict[str, dict[str, Any]], case_id: str) -> None:
    case = next(c for c in CASES if c.id == case_id)
    r = outcomes[case_id]
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
    assert "Traceback" not in r["stderr"] + r["stdout"], r["stderr"]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {r['stderr']!r}"
    line = lines[0]
    assert r["code"] == 2, (r["code"], line)
    assert line.startswith("error: "), line
    assert case.expect in line, f"{case.expect!r} not in {line!r}"
    assert FIX.search(line.split(":", 1)[1]), f"the line names no fix: {line!r}"
    assert not r["new_files"], f"written: {r['new_files']}"
    if case.id != "store-is-a-file":
        assert not r["store_is_dir"] and r["store_text"] is None, f"{r['store']} was written"
    else:
        assert r["store_text"] == "x"
