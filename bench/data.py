"""The benchmark scene set: generated once, cached under ``.cache/bench/`` and reused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from cubeless.demo.synthetic import SceneSet, bench_config, generate, load_scene_set

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CUBELESS_BENCH_CACHE", ROOT / ".cache" / "bench"))


#: The benchmark's scenes: one 38.4 km UTM tile imaged on 25 consecutive days of May 2024 (every
#: scene falls in the May bin), realistic noise (30 DN), COGs with 2/4/8x overviews.
CONFIG = bench_config(every_days=1)


def scene_set(*, workers: int | None = None, log=print) -> SceneSet:
    """The cached :data:`CONFIG` scene set (generated on first use, a few minutes; then reused)."""
    cfg = CONFIG
    key = hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode()).hexdigest()[:12]
    root = CACHE / f"scenes-{key}"
    if (root / "synthetic.json").exists() and (root / ".complete").exists():
        return load_scene_set(root)
    if root.exists():
        shutil.rmtree(root)
    tmp = CACHE / f".scenes-{key}.{os.getpid()}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    n = len(cfg.acquisitions)
    log(f"generating the benchmark scene set ({n} scenes, once) under {root} ...")
    t0 = time.perf_counter()
    generate(cfg, tmp, workers=workers or max(1, min(2, os.cpu_count() or 1)))
    # Hrefs are absolute: regenerate the catalog with the final root by moving and rewriting.
    os.replace(tmp, root)
    _rewrite_root(root, str(tmp.resolve()), str(root.resolve()))
    (root / ".complete").write_text("ok\n")
    log(f"generated in {time.perf_counter() - t0:.0f} s")
    return load_scene_set(root)


def _rewrite_root(root: Path, old: str, new: str) -> None:
    for p in [root / "items.ndjson", root / "items.json", root / "collection.json", *(root / "items").glob("*.json")]:
        p.write_text(p.read_text().replace(old, new))
