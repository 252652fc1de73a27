"""The Icechunk format: same cube as the Zarr format, one snapshot per run, nothing visible before it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from cubeless import icechunk_store as IC
from cubeless import store as S
from cubeless.errors import CubelessError, PlanError, SpecError
from cubeless.grid import cube_geobox, grid_of, iter_tiles
from cubeless.models import Task
from cubeless.spec import parse_spec
from cubeless.state import RunState
from cubeless.timebins import time_bins

GEO = dict(name="s", bbox=[10.0, 45.0, 10.05, 45.03], resolution=0.00027, chunk=64)  # 112 x 186 px: edge tiles


def make(tmp_path, name, fmt, **kw):
    doc = {**GEO, "start": "2020-01-01", "end": "2020-02-29", "store": str(tmp_path / name), "format": fmt, **kw}
    spec = parse_spec(doc)
    gb = cube_geobox(spec)
    return spec, gb, grid_of(gb, spec.crs)


def tasks(spec, gb, grid, run_id="r"):
    out = []
    for t, b in enumerate(time_bins(spec.start, spec.end, spec.interval)):
        out += [Task(run_id=run_id, spec=spec, grid=grid, tile=tile, bin=b, t=t) for tile in iter_tiles(gb, spec.chunk)]
    return out


def payload(task):
    rng = np.random.default_rng(1000 * task.t + 10 * task.tile.iy + task.tile.ix)
    shape = (task.tile.ny, task.tile.nx)
    bands = {b: rng.integers(0, 4000, shape).astype(np.uint16) for b in task.spec.bands}
    if task.tile.ix == 0 and task.t == 1:
        bands = {b: np.zeros(shape, np.uint16) for b in task.spec.bands}  # an all-fill chunk: not stored
    return bands, rng.integers(0, 9, shape).astype(np.uint16)


def build_zarr(spec, gb, grid):
    S.ensure_cube(spec, grid)
    ts = tasks(spec, gb, grid)
    for task in ts:
        S.write_task(task, *payload(task))
    S.publish_bins(spec.store, max(t.t for t in ts) + 1)


def stage(spec, gb, grid, run_id="r"):
    S.ensure_cube(spec, grid)
    state = RunState(spec.store, run_id)
    ts = tasks(spec, gb, grid, run_id)
    S.stage_run(state, sorted({t.bin for t in ts}, key=lambda b: b.start))
    return state, ts


def commit(state, ts):
    return IC.commit_run(state, [t.task_id for t in ts], message=f"run {state.run_id}", metadata={"run_id": state.run_id, "bins": []})


def test_same_layout_metadata_and_values_as_the_zarr_format(tmp_path):
    zspec, gb, grid = make(tmp_path, "z", "zarr")
    ispec, _, _ = make(tmp_path, "i", "icechunk")
    build_zarr(zspec, gb, grid)
    state, ts = stage(ispec, gb, grid)
    for task in ts:
        S.write_task(task, *payload(task))
    commit(state, ts)

    zg, ig = S._open_group(zspec.store), IC.read_group(ispec.store)
    # Pyramid levels (and their GeoZarr multiscales attributes) are written by the Zarr format only.
    za, ia = dict(zg.attrs), dict(ig.attrs)
    zc, ic_ = dict(za.pop("cubeless")), dict(ia.pop("cubeless"))
    assert ic_.pop("pyramid") == {"levels": []} and zc.pop("pyramid", None) is not None
    assert ic_ == zc
    assert {k: v for k, v in ia.items()} == {k: v for k, v in za.items() if k in ia}
    assert {"Conventions", "title", "source"} <= set(ia)
    assert sorted(ig.array_keys()) == sorted(zg.array_keys())
    for name in zg.array_keys():
        zm, im = zg[name].metadata.to_dict(), ig[name].metadata.to_dict()
        assert im == zm, name  # shape, chunks, codecs, fill value, dimension names, CF attributes
    z, i = S.open_cube(zspec.store, raw=True).load(), S.open_cube(ispec.store, raw=True).load()
    assert sorted(i.data_vars) == sorted(z.data_vars) and {k: z.attrs[k] for k in ("Conventions", "title", "source")} == {k: i.attrs[k] for k in ("Conventions", "title", "source")}
    for v in (*zspec.bands, "count", "time_bnds"):
        assert i[v].dtype == z[v].dtype
        np.testing.assert_array_equal(i[v].values, z[v].values)
    np.testing.assert_array_equal(i.time.values, z.time.values)
    assert S.committed_bins(ispec.store) == S.committed_bins(zspec.store) and len(S.committed_bins(ispec.store)) == 2
    assert S.time_values(ispec.store) == S.time_values(zspec.store)
    assert int(i.red.isel(time=1, longitude=slice(0, 64)).max()) == 0 and int(i.red.isel(time=0).min()) >= 0


def test_nothing_is_visible_until_the_commit_then_one_tagged_snapshot(tmp_path):
    spec, gb, grid = make(tmp_path, "i", "icechunk")
    state, ts = stage(spec, gb, grid, "run-a")
    created = IC.tip(spec.store)
    for task in ts[:-1]:  # a partial run: one task missing
        S.write_task(task, *payload(task))
    assert IC.tip(spec.store) == created and S.committed_bins(spec.store) == []
    assert S.open_cube(spec.store).sizes["time"] == 0
    assert [s.message for s in IC.history(spec.store)][0] == "cubeless: create cube s"
    S.write_task(ts[-1], *payload(ts[-1]))
    snap, figures = commit(state, ts)
    assert figures["icechunk_fork_bytes"] > 0
    hist = IC.history(spec.store)
    assert [h.id for h in hist[:2]] == [snap, created]  # one snapshot per run: the staging commit was amended
    assert hist[0].message == "run run-a" and hist[0].run_id == "run-a" and hist[0].tags == ["run-a"]
    assert "run.run-a" not in IC.open_repo(spec.store).list_branches()
    assert len(S.committed_bins(spec.store)) == 2
    # committing again is harmless: same snapshot, no new one
    assert commit(state, ts)[0] == snap and IC.tip(spec.store) == snap
    # reading at a version: the cube before the run
    assert S.open_cube(spec.store, version=created).sizes["time"] == 0
    assert S.open_cube(spec.store, version="run-a").sizes["time"] == 2


def test_duplicate_delivery_is_harmless(tmp_path):
    spec, gb, grid = make(tmp_path, "i", "icechunk")
    zspec, _, _ = make(tmp_path, "z", "zarr")
    build_zarr(zspec, gb, grid)
    state, ts = stage(spec, gb, grid)
    for task in ts + ts[:3]:  # three tasks delivered twice
        S.write_task(task, *payload(task))
    commit(state, ts)
    np.testing.assert_array_equal(S.open_cube(spec.store, raw=True).red.values, S.open_cube(zspec.store, raw=True).red.values)


def test_a_writer_committing_meanwhile_is_refused_never_overwritten(tmp_path):
    import zarr

    spec, gb, grid = make(tmp_path, "i", "icechunk")
    state, ts = stage(spec, gb, grid)
    for task in ts:
        S.write_task(task, *payload(task))
    repo = IC.open_repo(spec.store)
    other = repo.writable_session("main")
    zarr.open_group(other.store, mode="r+").attrs["note"] = "someone else"
    theirs = other.commit("another writer")
    with pytest.raises(CubelessError, match="main of .* moved .* nothing was overwritten"):
        commit(state, ts)
    assert IC.tip(spec.store) == theirs and S.committed_bins(spec.store) == []


def test_forks_hold_no_secrets_and_a_missing_fork_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekret-do-not-persist")
    spec, gb, grid = make(tmp_path, "i", "icechunk")
    state, ts = stage(spec, gb, grid)
    for task in ts[1:]:
        S.write_task(task, *payload(task))
    blob = (tmp_path / "i" / "_cubeless" / "runs" / "r" / IC.FORK_NAME).read_bytes()
    assert b"sekret" not in blob and isinstance(pickle.loads(blob), type(IC.task_fork(state)[0]))
    meta = json.loads((tmp_path / "i" / "_cubeless" / "runs" / "r" / IC.META_NAME).read_text())
    assert meta["committed_length"] == 0 and meta["length"] == 2
    with pytest.raises(CubelessError, match="no stored Icechunk change set"):
        commit(state, ts)
    assert S.committed_bins(spec.store) == []


def test_format_mismatch_is_one_line_naming_the_fix(tmp_path):
    zspec, gb, grid = make(tmp_path, "z", "zarr")
    S.ensure_cube(zspec, grid)
    wrong = zspec.model_copy(update={"format": "icechunk"})
    with pytest.raises(PlanError, match="holds a Zarr cube but the spec gives format icechunk; set `format: zarr`"):
        S.cube_state(wrong)
    ispec, _, _ = make(tmp_path, "i", "icechunk")
    S.ensure_cube(ispec, grid)
    with pytest.raises(PlanError, match="holds an Icechunk repository but the spec gives format zarr"):
        S.ensure_cube(ispec.model_copy(update={"format": "zarr"}), grid)
    with pytest.raises(SpecError, match="`format`: .* use zarr \\(default\\) or icechunk"):
        parse_spec({**GEO, "start": "2020-01-01", "end": "2020-01-31", "store": "x", "format": "netcdf"})


def test_default_format_keeps_run_ids(tmp_path):
    spec, _, _ = make(tmp_path, "z", "zarr")
    assert '"format"' not in spec.canonical_json()
    assert '"format":"icechunk"' in spec.model_copy(update={"format": "icechunk"}).canonical_json()


def two_runs(tmp_path):
    """A cube with run-a (Jan, Feb) then run-b (Mar) committed; returns (spec, snapshot a, snapshot b)."""
    spec, gb, grid = make(tmp_path, "i", "icechunk")
    state, ts = stage(spec, gb, grid, "run-a")
    for task in ts:
        S.write_task(task, *payload(task))
    a = commit(state, ts)[0]
    fs_put_manifest(state, spec, 2)
    spec3 = spec.model_copy(update={"end": parse_spec({**spec.model_dump(mode="json"), "end": "2020-03-31"}).end})
    state_b = RunState(spec.store, "run-b")
    ts_b = [t.model_copy(update={"run_id": "run-b", "spec": spec3}) for t in tasks(spec3, gb, grid, "run-b") if t.t == 2]
    S.stage_run(state_b, [ts_b[0].bin])
    for task in ts_b:
        S.write_task(task, *payload(task))
    b = commit(state_b, ts_b)[0]
    fs_put_manifest(state_b, spec3, 3)
    return spec, a, b


def fs_put_manifest(state, spec, n):
    from datetime import datetime, timezone

    from cubeless import fs
    from cubeless.commit import manifest_uri
    from cubeless.models import Manifest
    from cubeless.store import bins_from

    bins = bins_from(spec.start, n, spec.interval)
    m = Manifest(cubeless_version="t", run_id=state.run_id, spec=spec, complete=True, committed_bins=bins, run_bins=bins,
                 tasks_planned=1, tasks_done=1, tasks_failed=0, created=datetime.now(timezone.utc))
    state.write_manifest_bytes(m.model_dump_json().encode())
    fs.put_bytes(manifest_uri(state.store), m.model_dump_json().encode())


def test_rollback_moves_main_back_keeps_tags_and_the_cube_can_be_rebuilt(tmp_path):
    from cubeless.commit import read_manifest

    spec, a, b = two_runs(tmp_path)
    assert [h.run_id for h in IC.history(spec.store)[:2]] == ["run-b", "run-a"]
    r = IC.rollback_cube(spec.store, "run-a")
    assert (r.old, r.new, [d.run_id for d in r.dropped], r.run_id) == (b, a, ["run-b"], "run-a")
    assert IC.tip(spec.store) == a and len(S.committed_bins(spec.store)) == 2
    assert read_manifest(spec.store).run_id == "run-a"
    assert not (tmp_path / "i" / "_cubeless" / "runs" / "run-b").exists()  # a re-run plans those bins afresh
    assert S.open_cube(spec.store, version="run-b").sizes["time"] == 3  # the dropped snapshot stays readable
    assert any("reset" in op.lower() or "branch" in op.lower() for op in IC.operations(spec.store)[:1]), IC.operations(spec.store)[:3]
    with pytest.raises(PlanError, match="not in the history of main"):
        IC.rollback_cube(spec.store, "run-b")
    with pytest.raises(PlanError, match="neither a tag nor a snapshot id"):
        IC.rollback_cube(spec.store, "nope")
    # Rebuilding the dropped bins is one new snapshot, tagged run-b.2 (the old tag is kept).
    state_b = RunState(spec.store, "run-b")
    gb = cube_geobox(spec)
    grid = grid_of(gb, spec.crs)
    spec3 = spec.model_copy(update={"end": parse_spec({**spec.model_dump(mode="json"), "end": "2020-03-31"}).end})
    ts_b = [t for t in tasks(spec3, gb, grid, "run-b") if t.t == 2]
    S.stage_run(state_b, [ts_b[0].bin])
    for task in ts_b:
        S.write_task(task, *payload(task))
    c = commit(state_b, ts_b)[0]
    hist = IC.history(spec.store)
    assert [h.id for h in hist[:2]] == [c, a] and hist[0].tags == ["run-b.2"]
    np.testing.assert_array_equal(S.open_cube(spec.store, raw=True).red.values, S.open_cube(spec.store, raw=True, version="run-b").red.values)


def test_cli_info_history_rollback(tmp_path):
    from typer.testing import CliRunner

    from cubeless.cli import app

    spec, a, b = two_runs(tmp_path)
    cli = CliRunner()
    got = cli.invoke(app, ["info", spec.store, "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["format"] == "icechunk" and doc["snapshot"] == b and doc["time_steps"] == 3 and doc["tags"] == ["run-b"]
    got = cli.invoke(app, ["history", spec.store, "--json"])
    assert got.exit_code == 0 and [s["id"] for s in json.loads(got.stdout)][:2] == [b, a]
    got = cli.invoke(app, ["rollback", spec.store, "--to", a])
    assert got.exit_code == 0 and f"back from {b} to {a}" in got.stdout and "run-b" in got.stdout
    assert json.loads(cli.invoke(app, ["info", spec.store, "--json"]).stdout)["snapshot"] == a
    got = cli.invoke(app, ["rollback", spec.store, "--to", "nope"])
    assert got.exit_code == 2 and "neither a tag nor a snapshot id" in got.stderr
    zspec, gb, grid = make(tmp_path, "z", "zarr")
    S.ensure_cube(zspec, grid)
    got = cli.invoke(app, ["history", zspec.store])
    assert got.exit_code == 2 and "only `format: icechunk` keeps a history" in got.stderr
    assert json.loads(cli.invoke(app, ["info", zspec.store, "--json"]).stdout)["format"] == "zarr"


# -- S3 (moto) --------------------------------------------------------------------------------------
@pytest.fixture
def moto_s3():
    """A moto S3 server with a bucket ``cubes``; icechunk and s3fs reach it through AWS_ENDPOINT_URL."""
    import logging
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing-key-id",
           "AWS_SECRET_ACCESS_KEY": "sekret-s3-value", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        fsys = s3fs.S3FileSystem()
        if not fsys.exists("cubes"):
            fsys.mkdir("cubes")
        yield fsys
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.mark.slow
def test_an_icechunk_run_on_s3_commits_once_with_no_credentials_in_the_forks(tmp_path, moto_s3):
    zspec, gb, grid = make(tmp_path, "z", "zarr")
    build_zarr(zspec, gb, grid)
    spec = parse_spec({**zspec.model_dump(mode="json"), "store": "s3://cubes/ic/cube", "format": "icechunk"})
    state, ts = stage(spec, gb, grid)
    created = IC.tip(spec.store)
    for task in ts:
        S.write_task(task, *payload(task))
    assert IC.tip(spec.store) == created and S.committed_bins(spec.store) == []  # nothing visible yet
    blobs = [moto_s3.cat_file(p) for p in moto_s3.find("cubes/ic/cube/_cubeless/runs/r") if p.endswith((".pickle", ".fork"))]
    assert len(blobs) == len(ts) + 1
    assert not any(b"sekret-s3-value" in b or b"testing-key-id" in b for b in blobs)
    snap, _ = commit(state, ts)
    assert IC.tip(spec.store) == snap and IC.history(spec.store)[0].tags == ["r"]
    for v in ("red", "count"):
        np.testing.assert_array_equal(S.open_cube(spec.store, raw=True)[v].values, S.open_cube(zspec.store, raw=True)[v].values)
