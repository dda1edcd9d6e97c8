"""Gateways the real-vLLM tests need, started in the background at the session's first test.

A gateway's start is mostly its vLLM's start: 40-60 s of single-threaded imports on this kind of machine. The
in-process tests run first (conftest sorts the `e2e` tests last) and keep one core busy, so the other core is free
for minutes: every gateway booted there is a start the real-vLLM tests do not wait for.

How it is used: a test module (or the conftest) registers a starter under the name of the fixture that will use the
gateway (`register`); the conftest's session fixture calls `start_needed` at the first test, which starts every
registered gateway that some collected test asks for (directly or through other fixtures), without waiting; the
fixture then `take`s what was started, or starts it then (a single test run on its own). Whatever is still running at
the session's end is stopped there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from tests.procs import stop


class Booted(Protocol):
    proc: subprocess.Popen


Starter = Callable[[pytest.TempPathFactory], Any]
"""Starts one gateway without waiting for it; returns something with its process as `.proc`."""

_starters: dict[str, Starter] = {}
_started: dict[str, Booted] = {}


def register(fixture: str, starter: Starter) -> None:
    """At import (collection): `starter` boots the gateway that the fixture named `fixture` hands to its tests."""
    _starters[fixture] = starter


def start_needed(items: list[pytest.Item], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Start each registered gateway that a collected test needs; the names started."""
    running = [item for item in items if _will_run(item)]
    needed = [name for name in _starters if any(name in item.fixturenames for item in running)]
    for name in needed:
        if name not in _started:
            _started[name] = _starters[name](tmp_path_factory)
    return needed


def _will_run(item: pytest.Item) -> bool:
    """False for a test marked to be skipped (`skip`, or `skipif` with a condition already true)."""
    if item.get_closest_marker("skip") is not None:
        return False
    return not any(any(arg is True for arg in marker.args) for marker in item.iter_markers("skipif"))


def take(fixture: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The gateway booted for `fixture` (started now if it was not); each boot is handed out once."""
    booted = _started.pop(fixture, None)
    return booted if booted is not None else _starters[fixture](tmp_path_factory)


def stop_all() -> None:
    """Stop the boots that no fixture took (a test deselected after collection, a session that failed early)."""
    while _started:
        _, booted = _started.popitem()
        stop(booted.proc)
