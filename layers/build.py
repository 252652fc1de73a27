"""Build the Lambda layer of the planner and commit functions: cubeless and its runtime dependencies.

No Docker: pip downloads manylinux wheels for the functions' architecture and CPython 3.12
(``--platform ... --only-binary=:all:``), pinned by the same ``constraints.txt`` as the venv and
the worker image. The result is a zip with everything under ``python/``, built in two cached
steps under ``.cache/layers/``:

1. ``deps-<arch>-<key>.zip``: the third-party packages, keyed by ``constraints.txt``, the
   dependencies in ``pyproject.toml``, the architecture and this recipe. Slow once (~1 min with a
   warm pip cache), then reused.
2. ``layer-<arch>-<key>.zip``: a copy of (1) with the ``cubeless`` package appended, keyed also by
   the package's files. Under a second.

Both zips are deterministic (sorted entries, fixed timestamps), so an unchanged layer keeps its
asset hash and CDK does not upload it again.

Run ``python -m layers.build [arm64|x86_64]`` to build and print the zip path and sizes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

Arch = Literal["arm64", "x86_64"]

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "layers"
#: Lambda's limit on a function's unzipped code plus all its layers.
UNZIPPED_LIMIT = 250 * 2**20
#: Bump when the recipe changes what goes into the deps zip.
RECIPE = "4"

_PIP_ARCH = {"arm64": "aarch64", "x86_64": "x86_64"}
#: Needed on Lambda but not declared by cubeless: Powertools' Tracer imports the X-Ray SDK.
EXTRA_REQUIREMENTS = ("aws-xray-sdk",)
#: Dropped from every package: test suites, bytecode caches, C headers and sources, type stubs.
STRIP_DIRS = {"__pycache__", "tests", "include"}
STRIP_SUFFIXES = (".pyc", ".pyo", ".pyi", ".pxd", ".pyx", ".c", ".cpp", ".h", ".hpp")
#: Read rasters and images: only the worker's compose step does, and it runs in the container
#: image. Dropping them (~140 MiB unzipped) keeps the layer under Lambda's 250 MiB. Their
#: ``.dist-info`` stays, so the manifest's package versions (written by the commit function) name
#: the pinned versions the worker image runs.
WORKER_ONLY = ("rasterio", "rasterio.libs", "PIL", "pillow.libs")


@dataclass(frozen=True)
class Layer:
    """A built layer zip and what it weighs."""

    zip_path: Path
    zipped_bytes: int
    unzipped_bytes: int

    @property
    def unzipped_mb(self) -> float:
        return self.unzipped_bytes / 2**20


def requirements() -> list[str]:
    """cubeless's runtime requirements (``dependencies`` + the ``aws`` extra) plus Lambda extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["aws"], *EXTRA_REQUIREMENTS]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


def _package_files() -> list[Path]:
    pkg = ROOT / "cubeless"
    return sorted(
        p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo"))
    )


def deps_key(arch: Arch) -> str:
    return _digest(RECIPE.encode(), arch.encode(), (ROOT / "constraints.txt").read_bytes(), "\n".join(requirements()).encode())


def layer_key(arch: Arch) -> str:
    parts = [deps_key(arch).encode()]
    for p in _package_files():
        parts += [str(p.relative_to(ROOT)).encode(), p.read_bytes()]
    return _digest(*parts)


def _stripped(path: Path) -> bool:
    return bool(STRIP_DIRS.intersection(path.parts[:-1])) or path.name.endswith(STRIP_SUFFIXES)


def _walk(site: Path) -> Iterator[tuple[Path, str]]:
    """Files to package under ``site`` with their zip names, sorted, stripped."""
    for p in sorted(site.rglob("*")):
        rel = p.relative_to(site)
        if p.is_file() and not _stripped(rel) and rel.parts[0] not in ("bin", *WORKER_ONLY):
            yield p, "python/" + rel.as_posix()


def _write(zf: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data, compresslevel=6)


def pip_install(arch: Arch, target: Path) -> None:
    """Install the requirements as manylinux wheels for ``arch`` and CPython 3.12 into ``target``."""
    a = _PIP_ARCH[arch]
    cmd = [
        sys.executable, "-m", "pip", "install", "-qq", "--disable-pip-version-check", "--no-compile",
        # Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): manylinux2014 and 2_28 wheels both load.
        "--platform", f"manylinux2014_{a}", "--platform", f"manylinux_2_28_{a}",
        "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        "--target", str(target), "-c", str(ROOT / "constraints.txt"), *requirements(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def build_deps(arch: Arch, *, log=print) -> Path:  # noqa: ANN001
    """The cached third-party zip for ``arch``, built if missing."""
    out = CACHE / f"deps-{arch}-{deps_key(arch)}.zip"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"layer: installing {arch} wheels for python3.12 (once per constraints.txt) ...")
    with tempfile.TemporaryDirectory(prefix="cubeless-layer-") as tmp:
        site = Path(tmp) / "site"
        pip_install(arch, site)
        partial = _partial(out)
        with zipfile.ZipFile(partial, "w") as zf:
            for path, name in _walk(site):
                _write(zf, name, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)
        partial.replace(out)
    _prune(f"deps-{arch}-", keep=out)
    return out


def build_layer(arch: Arch = "arm64", *, log=print) -> Layer:  # noqa: ANN001
    """The cached layer zip (dependencies + cubeless) for ``arch``, built if missing."""
    out = CACHE / f"layer-{arch}-{layer_key(arch)}.zip"
    if not out.exists():
        deps = build_deps(arch, log=log)
        partial = _partial(out)
        shutil.copyfile(deps, partial)
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        with zipfile.ZipFile(partial, "a") as zf:
            for p in _package_files():
                _write(zf, "python/" + p.relative_to(ROOT).as_posix(), p.read_bytes())
            # Minimal metadata so importlib.metadata.version("cubeless") (the manifest's version) works.
            _write(zf, f"python/cubeless-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: cubeless\nVersion: {version}\n".encode())
        partial.replace(out)
        _prune(f"layer-{arch}-", keep=out)
    with zipfile.ZipFile(out) as zf:
        unzipped = sum(i.file_size for i in zf.infolist())
    return Layer(out, out.stat().st_size, unzipped)


def _partial(out: Path) -> Path:
    """Where ``out`` is written before it is renamed into place (one per process: builds may race)."""
    return out.with_name(f"{out.name}.{os.getpid()}.partial")


def _prune(prefix: str, *, keep: Path) -> None:
    for old in CACHE.glob(prefix + "*.zip"):
        if old != keep:
            old.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    arch: Arch = args[0] if args else "arm64"  # type: ignore[assignment]
    if arch not in _PIP_ARCH:
        print(f"architecture {arch!r} is not arm64 or x86_64", file=sys.stderr)
        return 2
    layer = build_layer(arch)
    limit = "within" if layer.unzipped_bytes < UNZIPPED_LIMIT else "OVER"
    print(f"{layer.zip_path}\n  zipped {layer.zipped_bytes / 2**20:.1f} MiB, unzipped {layer.unzipped_mb:.1f} MiB ({limit} Lambda's 250 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
