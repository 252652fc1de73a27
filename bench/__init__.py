"""cubeless benchmarks (``make bench``: ``python -m bench``)."""

from __future__ import annotations


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``). Not ``getrusage`` maxrss: Linux carries the parent's peak
    into a child across fork + exec, so a benchmark child of a big parent reported the parent's
    figure (bench 4f once read 1,227 MB for a resume that peaks at 475 MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
