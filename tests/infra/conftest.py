"""One synth for every infra test: the default stack and a variant (existing bucket, x86_64, an
enabled schedule, an alarm topic, a public tile URL) in one app, with cdk-nag, and a small placeholder layer zip
instead of the real ~65 MB one (tests/infra/test_layer.py builds that, marked slow)."""

from __future__ import annotations

import fcntl
import json
import os
import zipfile
from pathlib import Path

import pytest
from infra_helpers import ROOT, VARIANT, Synth

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")


def _synthesize(outdir: Path, layer_zip: str) -> None:
    """Synthesize both stacks into ``outdir``; a cdk-nag failure is recorded in ``error.txt``."""
    import aws_cdk as cdk

    from infra.settings import Settings
    from infra.stack import CubelessStack, add_checks

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(outdir), context=context)
    with pytest.MonkeyPatch.context() as mp:  # the defaults, whatever CUBELESS_* this shell has
        for name in [n for n in os.environ if n.startswith("CUBELESS_")]:
            mp.delenv(name)
        for settings in (Settings(), Settings(**VARIANT)):
            CubelessStack(app, settings.stack_name, settings=settings, layer_zip=layer_zip, stack_name=settings.stack_name)
    add_checks(app)
    try:
        app.synth()
    except Exception as exc:  # cdk-nag findings; asserted by test_cdk_nag_finds_nothing_unacknowledged
        (outdir / "error.txt").write_text(str(exc))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Synth:
    """The synthesized app, once per test run even across xdist workers (a file lock guards it)."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    outdir = shared / "cubeless-cdk.out"
    with open(shared / "cubeless-cdk.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (outdir / "manifest.json").exists():
            layer = shared / "placeholder-layer.zip"
            with zipfile.ZipFile(layer, "w") as zf:
                zf.writestr("python/placeholder.py", "# stands in for layers/build.py's zip in template tests\n")
            _synthesize(outdir, str(layer))
    error = outdir / "error.txt"
    if not (outdir / "cubeless.template.json").exists():
        pytest.fail(f"synth failed: {error.read_text() if error.exists() else 'no template written'}")
    templates = {name: json.loads((outdir / f"{name}.template.json").read_text()) for name in ("cubeless", VARIANT["stack_name"])}
    return Synth(outdir, templates, error.read_text() if error.exists() else None)
