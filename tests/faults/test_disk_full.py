"""A disk that fills up during a run: one line on stderr (no traceback), exit 1, and the same
command resumes and completes once there is space. The store lives on a tiny tmpfs (needs root
to mount; skipped elsewhere)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.faults.conftest import cli, spec_doc, write_spec

pytestmark = pytest.mark.xdist_group("faults-disk-full")


@pytest.fixture
def tiny_disk(tmp_path: Path):  # noqa: ANN201
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_during_a_run_is_one_line_and_resumable(tiny_disk: Path, stac: str, env: dict[str, str]) -> None:
    spec = write_spec(tiny_disk.parent / "spec.yaml", spec_doc(stac, tiny_disk / "cube.zarr", "may"))
    args = ("run", str(spec), "--local", "--workers", "1", "--retries", "1")
    full = cli(*args, env=env)
    assert "Traceback" not in full.stderr + full.stdout, full.stderr[-3000:]
    assert full.returncode == 1, full.stderr[-3000:]
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [errors[0]] and "no space left on the device" in errors[0] and "run the same command again" in errors[0]
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    again = cli(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "COMPLETE" in again.stdout
