"""The machine description and the results table (stdout and docs/benchmarks.md)."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version


@dataclass
class Row:
    key: str
    name: str
    goal: str
    measured: str
    ratio: str
    ok: bool | None  # None: reference only, no goal

    @property
    def result(self) -> str:
        return "-" if self.ok is None else ("pass" if self.ok else "FAIL")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _ver(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    import numpy
    import rasterio

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()} ({platform.machine()})",
        "cores": str(cpus),
        "memory": f"{_mem_gb():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
        "odc-stac": _ver("odc-stac"),
        "zarr": _ver("zarr"),
        "dask": _ver("dask"),
        "load_at_start": " / ".join(f"{v:.1f}" for v in load),
    }


def table(rows: list[Row]) -> str:
    head = ["#", "Benchmark", "Goal", "Measured", "Ratio", "Result"]
    body = [[r.key, r.name, r.goal, r.measured, r.ratio, r.result] for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


def markdown(m: dict[str, str], rows: list[Row], notes: list[str], load_end: str) -> str:
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); numbers from the run below, not hand-edited.",
        "Both sides of every comparison run in the same invocation, alternating, and each figure is",
        "the median of the repetitions, so ratios hold on a shared, noisy machine. Timed calls run in",
        "fresh processes where memory is measured (peak RSS: that process's `VmHWM`).",
        "",
        "## Machine",
        "",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores available; memory {m['memory']}; {m['os']}",
        f"- Python {m['python']}, numpy {m['numpy']}, GDAL {m['gdal']} (rasterio {m['rasterio']}), "
        f"odc-stac {m['odc-stac']}, zarr {m['zarr']}, dask {m['dask']}",
        f"- load average (1/5/15 min) at start: {m['load_at_start']}; at end: {load_end} "
        "(includes the benchmark's own processes; see Notes for the CPU other processes took during the task runs)",
        "",
        "## Results",
        "",
        table(rows),
        "",
        "## Notes",
        "",
    ]
    out += [f"- {n}" for n in notes]
    out.append("")
    return "\n".join(out)


def section_of(key: str) -> str:
    """The section number of a row key (``4c`` -> ``4``) or of a note (``4c: ...``; ``Load: ...`` is 1's)."""
    m = re.match(r"(\d+)", key)
    return m.group(1) if m else "1"


def merge(old: str, rows: list[Row], notes: list[str], sections: set[str], m: dict[str, str]) -> str:
    """``old`` (a report :func:`markdown` wrote) with the rows and notes of ``sections`` replaced by
    ``rows`` and ``notes``: ``python -m bench --only 9`` updates section 9 and keeps the others, with
    a note saying when each part was measured. The Machine block stays the old run's."""
    head, _, rest = old.partition("## Results")
    body, _, tail = rest.partition("## Notes")
    kept: list[Row] = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 6 or cells[0] in ("#", "---") or set(cells[0]) <= {"-"}:
            continue
        if section_of(cells[0]) not in sections:
            ok = {"pass": True, "FAIL": False}.get(cells[5])
            kept.append(Row(cells[0], cells[1], cells[2], cells[3], cells[4], ok))
    old_notes = [ln[2:] for ln in tail.splitlines() if ln.startswith("- ")]
    old_notes = [n for n in old_notes if section_of(n) not in sections and not re.match(r"Sections? [\d, ]+ measured on", n)]
    order = {k: i for i, k in enumerate(sorted({section_of(r.key) for r in kept + rows}, key=int))}
    merged = sorted(kept + rows, key=lambda r: order[section_of(r.key)])  # stable: rows keep their order
    done = ", ".join(sorted(sections, key=int))
    stamp = (f"Section{'s' if len(sections) > 1 else ''} {done} measured on {m['date']} ({m['cpu']}, {m['cores']} "
             f"cores; load at start {m['load_at_start']}) by `python -m bench --only {done}`; the other rows are from "
             "the run under Machine.")
    notes_all = sorted([*old_notes, *notes], key=lambda n: int(section_of(n)))  # stable within a section
    lines = [head.rstrip(), "", "## Results", "", table(merged), "", "## Notes", ""]
    lines += [f"- {n}" for n in [*notes_all, stamp]]
    lines.append("")
    return "\n".join(lines)
