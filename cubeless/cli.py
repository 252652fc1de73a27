"""The `cubeless` command line.

Bad input (spec, options, files) prints one line naming the problem and the fix, exits 2 and
writes nothing. An incomplete run exits 1; a complete cube exits 0.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click help: rich's would swallow "[default: ...]" in help texts and print <bool> by flags.
    rich_markup_mode=None,
    help="Build cloud-free median Sentinel-2 datacubes (Zarr v3), on one machine or on AWS.",
)
out = Console()
err = Console(stderr=True)

T = TypeVar("T")

SpecArg = Annotated[Path, typer.Argument(help="Cube spec, YAML or JSON.", show_default=False)]


#: What Ctrl-C means for a command that writes (a run resumes where it stopped).
RESUME = "interrupted: run the same command again to resume where it stopped"


def _guard(fn: Callable[[], T], *, interrupted: str = RESUME) -> T:
    """Run a command body; a UserError becomes one line on stderr and exit code 2.

    Ctrl-C prints ``interrupted`` (what the interruption left behind) and exits 130.
    """
    from .fs import storage_problem

    try:
        return fn()
    except UserError as exc:
        # escape: messages quote user input and lists in brackets ("[west, south, east, north]"),
        # which rich would otherwise take for markup tags and silently drop.
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - S3 without credentials/endpoint/region is bad input too
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk is not bad input: the run is incomplete (exit 1) and resumable.
            where = f" writing {exc.filename}" if exc.filename else ""
            err.print(f"[bold red]error:[/] no space left on the device{escape(where)}; free some space (or choose "
                      "another store), then run the same command again: a run resumes where it stopped",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        line = storage_problem(exc)  # also aiohttp's connection errors, which are OSErrors
        if line is None:
            raise
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print(interrupted, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"cubeless {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Build cloud-free median Sentinel-2 datacubes (Zarr v3), on one machine or on AWS."""


@app.command()
def validate(spec: SpecArg) -> None:
    """Check a spec (and the AOI file it references) without touching the catalog or the store."""
    from .grid import cube_geobox, spec_region, tile_shape
    from .spec import load_spec

    def body():  # noqa: ANN202
        s = load_spec(spec)
        geobox = cube_geobox(s, spec_region(s))  # reads and checks the AOI file, as plan and run do
        return s, geobox.shape.yx, tile_shape(geobox, s.chunk)

    s, (h, w), (ty, tx) = _guard(body)
    out.print(f"[green]ok[/] {s.name}: {len(s.bands)} band(s), {w} x {h} px (width x height) in {tx} x {ty} tiles, "
              f"{s.crs} at {s.resolution:g}, chunk {s.chunk}, {s.start} .. {s.end} by {s.interval}, store {s.store}",
              highlight=False)


@app.command()
def plan(
    spec: SpecArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    max_tasks: Annotated[int, typer.Option(help="Refuse plans with more tasks than this.")] = 200_000,
) -> None:
    """Plan a run: tiles, tasks, scenes found, bytes to read and estimated cost. Writes nothing."""
    from .fs import check_writable
    from .plan import make_plan, plan_summary
    from .search import SearchStats
    from .spec import load_spec
    from .store import cube_state

    def body() -> dict:
        s = load_spec(spec)
        check_writable(s.store)  # what `run` would refuse, plan says too
        committed, origin = cube_state(s)
        stats = SearchStats()
        with err.status("searching the catalog ...") as status:
            p = make_plan(s, committed=committed, origin=origin, max_tasks=max_tasks,
                          progress=_search_progress(status, stats), stats=stats)
        return plan_summary(p)

    summary = _guard(body, interrupted="interrupted: nothing was written (plan never writes)")
    if as_json:
        print(json.dumps(summary, indent=2))  # plain JSON on stdout: numbers stay numbers
        return
    out.print(_plan_table(summary))


def _search_progress(status: Any, stats: Any, *, prefix: str = "") -> Callable[[int], None]:
    """A search progress callback that shows the search's live line (pages, items, items/s,
    partitions done) in a rich status, at most every 0.2 s."""
    import time

    last = [0.0]

    def on_search(_n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            status.update(f"{prefix}searching the catalog: {stats.line()}")

    return on_search


def _plan_table(summary: dict) -> Table:
    """The plan summary for people: the grid and the bins on one line each, bytes in KB/MB/GB."""
    rows = dict(summary)
    grid_keys = ("width", "height", "crs", "resolution", "chunk")
    bin_keys = ("bins", "first_bin", "last_bin")
    table = Table(title=f"plan for {rows.get('cube', '')}", show_header=False)
    for k, v in rows.items():
        if k in grid_keys[1:] or k in bin_keys[1:]:
            continue
        if k == "width":
            k, v = "grid", (f"{rows['width']} x {rows['height']} px (width x height), {rows['crs']} at "
                            f"{rows['resolution']:g}, chunk {rows['chunk']}")
        elif k == "bins":
            v = f"{rows['first_bin']} .. {rows['last_bin']} ({v})" if v else "none (all committed)"
        elif k == "empty_bins":
            if not v:
                continue
            k, v = "[yellow]bins without scenes", f"{', '.join(v)} (committed with count 0 everywhere)"
        elif k.endswith("bytes") and isinstance(v, (int, float)):
            v = _human_bytes(v)
        table.add_row(k.replace("_", " "), str(v))
    return table


@app.command()
def run(
    spec: SpecArg,
    local: Annotated[bool, typer.Option("--local", help="Run on this machine (AWS runs: `cubeless start`).")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes [default: CPU count].")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds one task attempt may take.")] = 90.0,
    retries: Annotated[int, typer.Option(min=0, max=20, help="Retries after a failed attempt.")] = 5,
    max_tasks: Annotated[int, typer.Option(min=1, help="Refuse plans with more tasks than this.")] = 200_000,
) -> None:
    """Build (or resume, or extend) the cube a spec describes."""
    from .spec import load_spec

    if not local:
        err.print("[bold red]error:[/] `cubeless run` builds on this machine: add --local, "
                  "or start an AWS run with `cubeless start SPEC`", soft_wrap=True)
        raise typer.Exit(2)
    from .fs import check_writable

    s = _guard(lambda: load_spec(spec))
    _guard(lambda: check_writable(s.store))
    outcome = _guard(lambda: _run_with_progress(s, workers=workers, timeout=timeout, retries=retries,
                                                max_tasks=max_tasks))
    raise typer.Exit(0 if outcome.complete else 1)


def _run_with_progress(s, *, workers, timeout, retries, max_tasks):  # noqa: ANN001, ANN202
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .prepare import Prepared
    from .runner import Progress, RunPolicy, run_local
    from .search import SearchStats

    policy = RunPolicy(workers=workers or max(1, os.cpu_count() or 1), timeout=timeout, retries=retries)
    bar = Bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    state: dict = {}
    planning = err.status(f"{s.name}: planning (searching the catalog, checking the store) ...")
    planning.start()

    def on_prepared(p: Prepared) -> None:
        planning.stop()
        if p.record is None:
            err.print(f"{s.name}: every time bin of the spec is already committed; nothing to do")
            return
        verb = "resuming" if p.resumed else "planned"
        err.print(f"{s.name}: {verb} run {p.record.run_id}: {p.record.task_count} tasks "
                  f"({p.already_done} already done), {p.record.items_found} scenes, "
                  f"{len(p.record.bins)} time bins, {policy.workers} workers", highlight=False)
        # Until the first task ends the bar would sit at 0 without a word: say what is happening.
        starting = f"starting {min(policy.workers, len(p.todo))} worker(s); the first tasks read their scenes ..."
        state["task"] = bar.add_task("tasks", total=len(p.todo), note=starting if p.todo else "")
        bar.start()

    def on_progress(p: Progress) -> None:
        note = f"failed {p.failed}  retried {p.retried}" if (p.failed or p.retried) else ""
        bar.update(state["task"], completed=p.done + p.failed, note=note)

    try:
        search_stats = SearchStats()
        outcome = run_local(s, policy=policy, max_tasks=max_tasks, progress=on_progress, on_prepared=on_prepared,
                            on_search=_search_progress(planning, search_stats, prefix=f"{s.name}: planning, "),
                            search_stats=search_stats)
    finally:
        planning.stop()
        bar.stop()
    _summary(outcome)
    return outcome


def _summary(outcome) -> None:  # noqa: ANN001
    m = outcome.manifest
    if m is None:
        return
    pool = outcome.pool
    table = Table(title=f"cube {m.spec.name}: {'COMPLETE' if m.complete else 'INCOMPLETE'}", show_header=False)
    table.add_row("store", m.spec.store)
    table.add_row("run", m.run_id)
    table.add_row("time steps (committed)", f"{len(m.committed_bins)}"
                  + (f"  ({m.committed_bins[0].label} .. {m.committed_bins[-1].label})" if m.committed_bins else ""))
    table.add_row("tasks planned / done / failed", f"{m.tasks_planned} / {m.tasks_done} / {m.tasks_failed}")
    if outcome.prepared.already_done:
        table.add_row("done before this invocation", str(outcome.prepared.already_done))
    table.add_row("attempts retried", str(pool.retried))
    table.add_row("scenes used", str(len(m.items_used)))
    if outcome.prepared.empty_bins:
        table.add_row("[yellow]bins without scenes", f"{', '.join(outcome.prepared.empty_bins)} "
                      "(committed, count 0 everywhere: the catalog had none, or max_cloud_cover left none)")
    table.add_row("wall time", f"{outcome.seconds:.1f} s")
    if pool.done:
        secs = sorted(r.seconds for r in pool.done)
        table.add_row("task time p50 / max", f"{secs[len(secs) // 2]:.2f} s / {secs[-1]:.2f} s")
    if m.cost:
        table.add_row("Lambda cost estimate", f"${m.cost.total_usd:.4f} (${m.cost.usd_per_1000_tasks:.3f} per 1,000 tasks)")
    for tid, why in list(m.failures.items())[:10]:
        table.add_row(f"[red]failed {escape(tid)}", escape(why[:160]))
    if not m.complete:
        table.add_row("[yellow]next", "fix the cause, then run the same command again: only failed tasks are redone")
    out.print(table)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where scenes, cube and preview go.")] = Path("demo-output"),
    earth_search: Annotated[bool, typer.Option("--earth-search", help="Use the real Earth Search catalog (needs internet).")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes [default: CPU count].")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Only serve the demo scenes over STAC (until Ctrl-C), "
                                        "for your own specs; builds nothing.")] = False,
    store_format: Annotated[str, typer.Option("--format", help="Storage format of the demo cube: zarr or icechunk.")] = "zarr",
) -> None:
    """Synthesize Sentinel-2 scenes, serve them over a real STAC API, build a cube and a PNG preview."""
    from .demo import run_demo

    if serve:
        _guard(lambda: _serve_demo_scenes(out_dir), interrupted="stopped the demo STAC server")
        return

    def run_spec(s):  # noqa: ANN001, ANN202
        return _run_with_progress(s, workers=workers, timeout=90.0, retries=5, max_tasks=200_000)

    if store_format not in ("zarr", "icechunk"):
        err.print(f"[bold red]error:[/] --format {escape(store_format)} is not known; use zarr or icechunk", highlight=False)
        raise typer.Exit(2)
    code = _guard(lambda: run_demo(out_dir, earth_search=earth_search, workers=workers, console=err, run=run_spec,
                                   format=store_format))
    raise typer.Exit(code)


def _serve_demo_scenes(out_dir: Path) -> None:
    """Serve the demo's scene set (synthesized into OUT/scenes if absent) until interrupted."""
    import time

    from .demo.runner import _scene_set
    from .demo.stac_server import serve_scene_set

    scene_set = _scene_set(Path(out_dir).resolve() / "scenes", err)
    with serve_scene_set(scene_set) as url:
        out.print(f"STAC API at {url} (collection {scene_set.collection['id']}, {len(scene_set.items)} scenes); "
                  f"use it as `stac_api:` in a spec. Ctrl-C stops it.", highlight=False, soft_wrap=True)
        while True:
            time.sleep(3600)


@app.command()
def preview(
    store: Annotated[str, typer.Argument(help="Cube store (path or s3:// URL).")],
    time: Annotated[str, typer.Option("--time", help="Time step: index or date (e.g. 2023-06).")] = "0",
    png: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("preview.png"),
) -> None:
    """Write a true-colour PNG of one committed time step."""
    from .demo.preview import write_preview

    _guard(lambda: write_preview(store, time, png))
    out.print(f"wrote {png}")


@app.command()
def serve(
    root: Annotated[str, typer.Argument(help="A cube, or a folder (or s3:// prefix) of cubes.")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Loopback port (0: any free one).")] = 8000,
) -> None:
    """Serve the web map, XYZ tiles, TileJSON and point queries of the cubes under ROOT on 127.0.0.1."""
    from .serve import serve as run_server

    def ready(url: str) -> None:
        out.print(f"serving {escape(root)} at {url} (Ctrl-C stops)", highlight=False, soft_wrap=True)

    _guard(lambda: run_server(root, port, on_ready=ready))


@app.command()
def manifest(store: Annotated[str, typer.Argument(help="Cube store (path or s3:// URL).")]) -> None:
    """Print the cube's manifest (what is committed, and whether it is complete)."""
    from .commit import read_manifest

    m = _guard(lambda: read_manifest(store))
    if m is None:
        err.print(f"[bold red]error:[/] {escape(store)} has no manifest: no run has committed there yet",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    out.print_json(m.model_dump_json())


StoreArg = Annotated[str, typer.Argument(help="Cube store (path or s3:// URL).", show_default=False)]


def _info_doc(store: str) -> dict:
    from .commit import read_manifest
    from .store import cube_info, store_format

    info = cube_info(store)
    if info is None:
        from .errors import UserError

        raise UserError(f"store {store} holds no cube; check the path, or build one with `cubeless run SPEC --local`")
    fmt = store_format(store)
    m = read_manifest(store)
    doc = {
        "store": info.store, "format": fmt, "interval": info.interval, "origin": info.origin.isoformat(),
        "time_steps": info.length, "first": info.committed_bins[0].label if info.committed_bins else None,
        "last": info.committed_bins[-1].label if info.committed_bins else None,
        "last_run": m.run_id if m else None, "complete": m.complete if m else None,
    }
    if fmt == "icechunk":
        from . import icechunk_store

        head = icechunk_store.history(store, limit=1)[0]
        doc.update({"snapshot": head.id, "snapshot_time": head.written_at.isoformat(), "snapshot_message": head.message,
                    "tags": head.tags})
    return doc


@app.command()
def info(store: StoreArg, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show what the cube holds: format, committed time steps, last run, and (Icechunk) the snapshot."""
    doc = _guard(lambda: _info_doc(store))
    if as_json:
        out.print_json(json.dumps(doc))
        return
    table = Table(title=f"cube {escape(store)}", show_header=False)
    for k, v in doc.items():
        table.add_row(k, escape(str(v)))
    out.print(table)


@app.command()
def history(
    store: StoreArg,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many snapshots.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the snapshots of an Icechunk cube, newest first: id, time, run, bins, tags, message."""
    from . import icechunk_store
    from .errors import UserError

    def body() -> list:
        if not icechunk_store.is_repo(store):
            raise UserError(f"store {store} is not an Icechunk cube: only `format: icechunk` keeps a history")
        return icechunk_store.history(store, limit=limit)

    snaps = _guard(body)
    if as_json:
        out.print_json(json.dumps([{**s.__dict__, "written_at": s.written_at.isoformat()} for s in snaps]))
        return
    table = Table(title=f"history of {escape(store)} (newest first)")
    for col in ("snapshot", "written (UTC)", "run", "bins", "tags", "message"):
        table.add_column(col)
    for s in snaps:
        bins = f"{s.bins[0]}..{s.bins[-1]} ({len(s.bins)})" if len(s.bins) > 1 else ", ".join(s.bins)
        table.add_row(s.id, f"{s.written_at:%Y-%m-%d %H:%M:%S}", escape(s.run_id or ""), bins,
                      escape(", ".join(s.tags)), escape(s.message))
    out.print(table)


@app.command()
def rollback(
    store: StoreArg,
    to: Annotated[str, typer.Option("--to", help="Snapshot id or tag (a run id) from `cubeless history`.", show_default=False)],
) -> None:
    """Move an Icechunk cube back to an earlier snapshot (recorded in the repository's operations log)."""
    from . import icechunk_store

    r = _guard(lambda: icechunk_store.rollback_cube(store, to), interrupted="interrupted: check `cubeless info STORE`")
    if not r.dropped:
        out.print(f"{escape(store)} is already at {r.new}; nothing changed", highlight=False, soft_wrap=True)
        return
    runs = ", ".join(s.run_id or s.id for s in r.dropped)
    out.print(f"rolled {escape(store)} back from {r.old} to {r.new}: dropped {len(r.dropped)} snapshot(s) ({escape(runs)}); "
              f"they stay readable by their tags; running the spec again rebuilds them", highlight=False, soft_wrap=True)


StackOpt = Annotated[str, typer.Option("--stack", envvar="CUBELESS_STACK", help="Deployed stack name.")]


def _run_id(spec) -> str | None:  # noqa: ANN001
    """The run a spec would start now (None when every bin is committed): the execution's name."""
    from .models import run_id_for
    from .plan import bins_to_fill
    from .store import cube_state

    committed, origin = cube_state(spec)
    bins = bins_to_fill(spec, committed, origin)
    return run_id_for(spec, bins) if bins else None


def _show_execution(ex) -> None:  # noqa: ANN001
    table = Table(title=f"run {ex.name}: {ex.status}", show_header=False)
    table.add_row("execution", ex.arn)
    if ex.started:
        table.add_row("started", str(ex.started))
    if ex.stopped:
        table.add_row("stopped", str(ex.stopped))
    if ex.cause:
        table.add_row("[red]cause", ex.cause)
    if ex.console_url:
        table.add_row("console", ex.console_url)
    out.print(table)


@app.command()
def start(
    spec: SpecArg,
    stack: StackOpt = "cubeless",
    lanes: Annotated[Optional[int], typer.Option(min=1, help="Parallel worker lanes [default: the stack's].")] = None,
) -> None:
    """Start (or resume) an AWS run of a spec on the deployed state machine."""
    from .aws import Pipeline, RunRequest
    from .spec import load_spec

    def body() -> None:
        s = load_spec(spec)
        run_id = _run_id(s)
        if run_id is None:
            out.print(f"{s.name}: every time bin of the spec is already committed; nothing to do")
            return
        ex = Pipeline.from_stack(stack).start(RunRequest(spec=s, lanes=lanes), name=run_id)
        _show_execution(ex)
        out.print(f"follow it with: cubeless status {ex.name} --stack {stack}")

    _guard(body)


@app.command()
def status(run_name: Annotated[str, typer.Argument(metavar="RUN", help="Run id / execution name or ARN.")],
           stack: StackOpt = "cubeless") -> None:
    """Show an AWS run's execution status, and its failure cause if it failed."""
    from .aws import Pipeline

    ex = _guard(lambda: Pipeline.from_stack(stack).status(run_name))
    _show_execution(ex)
    raise typer.Exit(0 if ex.status in ("SUCCEEDED", "RUNNING") else 1)


@app.command()
def redrive(run_name: Annotated[str, typer.Argument(metavar="RUN", help="Run id / execution name or ARN.")],
            stack: StackOpt = "cubeless") -> None:
    """Re-run only the failed tasks of an AWS run (after fixing their cause).

    Clears the run's dead-lettered messages and starts the run again: its planner finds the task
    list in the store and re-queues only the tasks without a done marker.
    """
    import json as _json
    import re

    from .aws import Pipeline, RunRequest, TaskQueue, parse_request, stack_outputs

    def body() -> None:
        outputs = stack_outputs(stack)
        pipeline = Pipeline(outputs["StateMachineArn"])
        arn = pipeline.execution_arn(run_name)
        described = pipeline.sfn.describe_execution(executionArn=arn)
        request: RunRequest = parse_request(_json.loads(described["input"]))
        run_id = re.sub(r"-r\d+$", "", described["name"])  # executions after the first are <run id>-rN
        dropped = TaskQueue(outputs["DeadLetterQueueUrl"]).move_to(None, run_id=run_id)
        ex = pipeline.start(request, name=run_id)
        out.print(f"cleared {dropped} dead-lettered task message(s); the new execution re-queues every task not done")
        _show_execution(ex)

    _guard(body)


@app.command()
def view(
    stack: StackOpt = "cubeless",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Loopback port (0: any free one).")] = 8000,
) -> None:
    """Serve the map of the cubes in a deployed stack's bucket on 127.0.0.1.

    A local proxy forwards every request to the stack's tile function (its Function URL, AuthType
    AWS_IAM), signed with your AWS credentials; they need lambda:InvokeFunctionUrl and
    lambda:InvokeFunction on it.
    """
    from .aws import SignedProxy
    from .serve import make_http_server, run_server

    def ready(url: str) -> None:
        out.print(f"map of stack {escape(stack)} at {url} (requests signed with your AWS credentials; Ctrl-C stops)",
                  highlight=False, soft_wrap=True)

    def body() -> None:
        proxy = SignedProxy.from_stack(stack)
        with err.status(f"asking the tile function at {proxy.url} (a cold start takes a few seconds) ..."):
            proxy.check()
        run_server(make_http_server(proxy.answer, port), on_ready=ready)

    _guard(body, interrupted="stopped the map proxy")


def main() -> None:
    """Console-script entry point.

    Bad options are bad input like any other: one line naming the problem and where to look,
    exit 2 (click's own report is a usage line plus a boxed panel).
    """
    import sys

    try:  # typer >= 0.2x carries its own copy of click
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # pragma: no cover - typer on top of click
        from click.exceptions import ClickException, UsageError  # type: ignore[assignment]

    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `cubeless` alone: the help was printed
            sys.exit(exc.exit_code)
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
        msg = exc.format_message().rstrip(".")
        err.print(f"[bold red]error:[/] {escape(msg)}{escape(where)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
