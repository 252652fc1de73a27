"""``cubeless demo``: the whole pipeline on synthetic scenes served by a real STAC API.

1. synthesize a Sentinel-2 L2A scene set (COGs with overviews, two UTM zones, clouds, shadows,
   water, snow, nodata edges, two months with data and one without), or reuse it if present;
2. serve it with ``rustac serve`` on loopback;
3. build the cube with the local runner (plan -> process pool -> commit);
4. check every committed pixel against the analytic truth of the synthetic scenes;
5. write a true-colour PNG preview per month with data.

``--earth-search`` swaps step 1-2 for the public Earth Search catalog (needs internet): the
demo only chooses a spec.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from ..spec import CubeSpec, parse_spec

RunFn = Callable[[CubeSpec], Any]


def _scene_set(root: Path, console: Console):  # noqa: ANN202
    from .synthetic import demo_config, generate, load_scene_set

    config = demo_config()
    if (root / "synthetic.json").exists():
        try:
            existing = load_scene_set(root)
        except Exception:  # a half-written or older set: regenerate it
            existing = None
        if existing is not None and existing.config == config:
            console.print(f"reusing the synthetic scenes in {root}")
            return existing
    t0 = time.perf_counter()
    with console.status("synthesizing Sentinel-2 scenes ..."):
        scene_set = generate(config, root, workers=2)
    console.print(f"synthesized {len(scene_set.items)} scenes (COGs with overviews, 2 UTM zones) "
                  f"in {time.perf_counter() - t0:.1f} s -> {root}")
    return scene_set


def _previews(store: str, out_dir: Path, console: Console) -> list[Path]:
    from ..store import open_cube
    from .preview import write_preview

    ds = open_cube(store)
    written = []
    for i, t in enumerate(ds["time"].values):
        if int(ds["count"].isel(time=i).max()) == 0:
            continue  # a month with no scenes: nothing to show
        label = str(t)[:7]
        png = out_dir / f"preview-{label}.png"
        write_preview(store, i, png)
        written.append(png)
    if written:
        console.print("previews: " + ", ".join(str(p) for p in written))
    return written


def run_demo(
    out_dir: Path,
    *,
    earth_search: bool = False,
    workers: int | None = None,
    console: Console | None = None,
    run: RunFn | None = None,
    format: str = "zarr",
) -> int:
    """Run the demo; returns the process exit code (0 when the cube is complete and correct)."""
    from ..runner import RunPolicy, run_local
    from .specs import demo_spec, earth_search_spec
    from .stac_server import serve_scene_set
    from .verify import compare_cube

    console = console or Console(stderr=True)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    run = run or (lambda s: run_local(s, policy=RunPolicy(workers=workers or RunPolicy().workers)))
    t0 = time.perf_counter()

    if earth_search:
        spec = parse_spec(earth_search_spec(str(out_dir / "earth-search.zarr")))
        console.print(f"building {spec.name} from {spec.stac_api} (needs internet)")
        outcome = run(spec)
        _previews(spec.store, out_dir, console)
        return 0 if outcome.complete else 1

    scene_set = _scene_set(out_dir / "scenes", console)
    store = str(out_dir / ("cube.icechunk" if format == "icechunk" else "cube.zarr"))
    if Path(store).exists():
        import shutil

        console.print(f"removing the previous demo cube {store}")
        shutil.rmtree(store)
    with serve_scene_set(scene_set) as url:
        console.print(f"STAC API (rustac) serving {len(scene_set.items)} items at {url}")
        spec = parse_spec({**demo_spec(url, store), "format": format})
        outcome = run(spec)
    if not outcome.complete:
        console.print("[red]the cube is incomplete: see the failed tasks above[/]")
        return 1
    result = compare_cube(store, scene_set, spec)
    compared = sum(b.compared for b in result.bins)
    if not result.ok:
        console.print("[red]the cube differs from the synthetic truth:[/]\n" + result.summary())
        return 1
    console.print(f"[green]verified[/]: {compared:,} pixels x {len(spec.bands) + 1} variables over "
                  f"{len(result.bins)} time steps equal the analytic truth of the synthetic scenes")
    _previews(store, out_dir, console)
    if format == "icechunk":
        console.print(f"demo done in {time.perf_counter() - t0:.1f} s: open it with "
                      f"cubeless.open({store!r}) (versions: `cubeless history {store}`)")
        return 0
    console.print(f"demo done in {time.perf_counter() - t0:.1f} s: open it with "
                  f"xarray.open_zarr({store!r}); see it on a map with:")
    shown = os.path.relpath(store) if not os.path.relpath(store).startswith("..") else store
    console.print(f"cubeless serve {shown}", highlight=False, soft_wrap=True)
    return 0
