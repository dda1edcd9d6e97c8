"""Gateways the real-vLLM tests need, started in the background at the session's first test.

A gateway's start is mostly its vLLM's start: 40-60 s of single-threaded imports on this kind of machine. The
in-process tests run first (conftest sorts the `e2e` tests last) and keep one core busy, so the other core is free
for minutes: every gateway booted there is a start the real-vLLM tests do not wait for.

They boot one after the other, each once the one before answers /readyz: three vLLM starts at once beside the tests
took the in-process part from about 210 s to 306 s (OpenMP-threaded tests stall on a crowded machine), so the
boots' time came back as the tests' time.

How it is used: a test module (or the conftest) registers a starter under the name of the fixture that will use the
gateway (`register`); the conftest's session fixture calls `start_needed` at the first test, which boots, in turn and
without making the tests wait, every registered gateway that some collected test asks for (directly or through other
fixtures); the fixture then `take`s its gateway: booted, being booted, or started then if its turn has not come (a
single test run on its own). Whatever is still running at the session's end is stopped there.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from tests.procs import stop


class Booted(Protocol):
    proc: subprocess.Popen

    def wait_ready(self) -> object:
        """Return once the gateway answers /readyz (raise when it exits or never does)."""
        ...


Starter = Callable[[pytest.TempPathFactory], Any]
"""Starts one gateway without waiting for it; returns a `Booted`."""

_starters: dict[str, Starter] = {}
_started: dict[str, Booted] = {}
_taken: set[str] = set()
_lock = threading.Lock()
_session_over = threading.Event()


def register(fixture: str, starter: Starter) -> None:
    """At import (collection): `starter` boots the gateway that the fixture named `fixture` hands to its tests."""
    _starters[fixture] = starter


def start_needed(items: list[pytest.Item], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Boot, in turn and in the background, each registered gateway that a collected test needs; their names."""
    running = [item for item in items if _will_run(item)]
    needed = [name for name in _starters if any(name in item.fixturenames for item in running)]
    threading.Thread(target=_boot_in_turn, args=(needed, tmp_path_factory), name="test-boots", daemon=True).start()
    return needed


def _boot_in_turn(names: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in names:
        with _lock:
            if name in _taken or name in _started:
                continue
            booted = _started[name] = _starters[name](tmp_path_factory)
        with contextlib.suppress(Exception):  # the fixture that takes it waits again and reports why
            booted.wait_ready()
    # The gateways die with the thread that started them (PR_SET_PDEATHSIG acts when the forking *thread* exits, not
    # the process), so this thread lives as long as the session.
    _session_over.wait()


def _will_run(item: pytest.Item) -> bool:
    """False for a test marked to be skipped (`skip`, or `skipif` with a condition already true)."""
    if item.get_closest_marker("skip") is not None:
        return False
    return not any(any(arg is True for arg in marker.args) for marker in item.iter_markers("skipif"))


def take(fixture: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The gateway booted for `fixture` (started now if its turn has not come); each boot is handed out once."""
    with _lock:
        _taken.add(fixture)
        booted = _started.pop(fixture, None)
        return booted if booted is not None else _starters[fixture](tmp_path_factory)


def stop_all() -> None:
    """Stop the boots that no fixture took (a test deselected after collection, a session that failed early)."""
    with _lock:
        _taken.update(_starters)  # nothing boots after this
        left = list(_started.values())
        _started.clear()
    for booted in left:
        stop(booted.proc)
    _session_over.set()
