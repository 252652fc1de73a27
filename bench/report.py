"""The machine description and the results table (stdout and docs/benchmarks.md)."""

from __future__ import annotations

import os
import platform
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
        "fresh processes where memory is measured (peak RSS: `getrusage` maxrss of that process).",
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
