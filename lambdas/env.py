"""What the stack tells every function (``CUBELESS_*`` variables), read once per process on first use."""

from __future__ import annotations

import functools

from cubeless.aws import Deployment, TaskQueue


@functools.cache
def deployment() -> Deployment:
    return Deployment.from_env()


@functools.cache
def queue() -> TaskQueue:
    return deployment().queue()


@functools.cache
def dead_letter_queue() -> TaskQueue | None:
    return deployment().dead_letter_queue()
