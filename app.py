#!/usr/bin/env python3
"""CDK app: `npx cdk synth` / `npx cdk deploy` from the repository root (see cdk.json).

Settings: cdk.json's context key ``cubeless``, ``-c cubeless='{...}'``, or ``CUBELESS_*`` variables
(infra/settings.py). The planner/commit layer is built (and cached) by layers/build.py unless
``layer_zip`` points at a prebuilt one; the worker image is staged, and built only by deploy.
"""

import sys

import aws_cdk as cdk

from infra.settings import Settings
from infra.stack import build
from layers.build import build_layer

app = cdk.App()
settings = Settings.from_context(app.node)
layer_zip = settings.layer_zip or str(build_layer(settings.architecture, log=lambda m: print(m, file=sys.stderr, flush=True)).zip_path)
build(app, settings, layer_zip=layer_zip)
app.synth()
