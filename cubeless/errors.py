"""Typed errors. A :class:`UserError` is bad input: the CLI prints its one line and exits 2."""

from __future__ import annotations


class CubelessError(Exception):
    """Base class of every error cubeless raises on purpose."""


class UserError(CubelessError):
    """Bad input (spec, file, option). ``str(err)`` is one line that names the problem and the fix."""

    exit_code = 2


class SpecError(UserError):
    """The cube spec is invalid."""


class PlanError(UserError):
    """The spec is valid but cannot be planned (store mismatch, too many tasks, catalog unreachable)."""


class HrefNotAllowed(CubelessError):
    """A scene asset points at a scheme or host outside the allowlist; the task fails without reading it."""


class TaskError(CubelessError):
    """A task failed; retried per policy."""
