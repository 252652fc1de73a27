"""A synthetic scene set (written once per test session) served by a real STAC API (rustac)."""

from __future__ import annotations

import pytest

from cubeless.demo.stac_server import serve_scene_set
from cubeless.demo.synthetic import demo_config, generate


@pytest.fixture(scope="session")
def scene_set(tmp_path_factory):
    return generate(demo_config(), tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="session")
def stac_url(scene_set):
    with serve_scene_set(scene_set) as url:
        yield url
