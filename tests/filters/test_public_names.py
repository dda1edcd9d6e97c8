"""`filters` exports its public names lazily: every one resolves, and importing the package pulls no heavy module."""

from __future__ import annotations

import subprocess
import sys

import pytest

import filters
from tests.procs import ROOT


@pytest.mark.parametrize("name", filters.__all__)
def test_every_public_name_resolves_to_the_object_of_its_module(name: str) -> None:
    value = getattr(filters, name)
    assert getattr(value, "__name__", name) == name


def test_the_written_out_list_is_the_lazy_table() -> None:
    assert filters.__all__ == sorted(filters._EXPORTS)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        filters.nothing  # noqa: B018


def test_importing_the_package_imports_neither_torch_nor_vllm_nor_the_policy_schema() -> None:
    code = "import sys, filters; print(sorted(m for m in ('torch', 'vllm', 'filters.policy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.anyio
async def test_the_docstring_example_does_what_it_says() -> None:
    policy = filters.load_policy_file(ROOT / "policies" / "spiderman.yaml")
    pipeline = filters.OutputPipeline(filters.OutputGuard(filters.SurfaceLayer([policy])), None,
                                      {policy.ref: policy.refusal})  # fmt: skip
    assert await pipeline.whole("Spider-Man swung by.") == ("[redacted] swung by.", False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
