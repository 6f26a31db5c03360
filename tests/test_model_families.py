"""The conformance matrix: the model families users train, each a tiny random-weight model built from a config.

Per family (Llama with the Mistral tokenizer, Qwen2 with Qwen2.5's, Phi-3 with Phi-3's, Gemma-2 with its
logit soft-cap, Granite with `logits_scaling`, Cohere with `logit_scale`; vocab_size = len(tokenizer)):

- thumbs' per-example completion log-probs (its own tokenization, collation and `Scorer`, policy and
  reference, and evaluation's `score_examples`) equal a naive float64 computation from `model(...).logits`
  on the conversation tokenized by the tokenizer's own `apply_chat_template`, to 1e-6; and skipping the
  family's head processing would not;
- a few training steps (the default 4-bit NF4 QLoRA path) run on a real HH-RLHF snapshot and the exported
  adapter loads with peft.

Also here: a head thumbs does not know is refused, and every dropout is off in scoring and reference passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tests.conftest import TOKENIZERS
from tests.test_train_sequences import END_OF_TURN, hh_rows, oracle
from evaluation.scoring import score_examples
from ingest.curate.snapshot import TRAIN, read_stats, split_files, write_split, write_stats
from training.config import TrainConfig
from training.data import collate, encode
from training.model import Scorer, UnsupportedHead, active_dropout, load_base
from training.trainer import train

# family: (tokenizer, config fields that make its head processing bite on random weights)
FAMILIES = {
    "llama": ("mistral-7b-v0.1", {}),
    "qwen2": ("qwen2.5", {"tie_word_embeddings": True}),
    "phi3": ("phi-3-mini", {}),
    "gemma2": ("mistral-7b-v0.1", {"final_logit_softcapping": 2.0, "head_dim": 16}),  # tied embeddings too
    "granite": ("phi-3-mini", {"logits_scaling": 8.0}),
    "cohere": ("mistral-7b-v0.1", {"logit_scale": 0.0625}),
}
PROCESSED = {"gemma2", "granite", "cohere"}


def tiny_config(model_type: str, tokenizer, **extra):
    fields = {**FAMILIES.get(model_type, (None, {}))[1], **extra}
    return AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **fields)


def tokenizer_of(family: str):
    return AutoTokenizer.from_pretrained(TOKENIZERS / FAMILIES[family][0])


def naive_logps(model, ids: list, n_prompt: int) -> float:
    """Σ log p over the completion tokens ids[n_prompt:] from the model's own full float64 logits."""
    x = torch.tensor([ids])
    logps = model(input_ids=x).logits.double().log_softmax(-1)[0, :-1]
    return float(logps[torch.arange(n_prompt - 1, len(ids) - 1), x[0, n_prompt:]].sum())


@pytest.fixture(scope="module")
def short_rows():
    """Real HH-RLHF examples short enough to need no truncation in any family's template."""
    return [r for r in hh_rows(40) if r["completion"].strip() and sum(len(m["content"]) for m in r["prompt"]) < 300][:6]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_completion_log_probs_equal_a_naive_float64_computation_on_the_joint_tokenization(family, short_rows):
    from peft import LoraConfig, get_peft_model

    tok = tokenizer_of(family)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config(family, tok), dtype=torch.float64)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adapter: policy and reference differ
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    encoded = encode(short_rows, tok, 4096, 2048)
    assert len(encoded) == len(short_rows) and encoded.counts["truncated_prompt"] == 0
    scorer = Scorer(model, chunk_tokens=16)
    batch = collate(encoded, torch.arange(len(encoded)).numpy(), 4096, tok.pad_token_id or 0)  # right-padded
    with torch.no_grad():
        policy = scorer(batch).tolist()
        with scorer.reference_mode():
            reference = scorer(batch).tolist()
        for k, row in enumerate(short_rows):
            prompt, completion = oracle(tok, row["prompt"], row["completion"], END_OF_TURN[FAMILIES[family][0]])
            ids = prompt + completion
            assert policy[k] == pytest.approx(naive_logps(model, ids, len(prompt)), abs=1e-6)
            with model.disable_adapter():
                assert reference[k] == pytest.approx(naive_logps(model, ids, len(prompt)), abs=1e-6)
        assert max(abs(p - r) for p, r in zip(policy, reference)) > 1e-2  # the adapter matters
    # Evaluation scores with the same head semantics: its policy and reference log-probs are training's.
    scores = score_examples(model, encoded, ["default"], batch_size=4, max_length=4096, pad_id=tok.pad_token_id or 0,
                            log=lambda s: None)["default"]
    assert scores["policy_logps"].tolist() == pytest.approx(policy, abs=1e-6)
    assert scores["reference_logps"].tolist() == pytest.approx(reference, abs=1e-6)
    with torch.no_grad():
        if family in PROCESSED:  # the head's processing matters: without it the log-probs would be far off
            hf = model.get_base_model()
            x = torch.tensor([prompt + completion])
            raw = hf.lm_head(hf.model(input_ids=x).last_hidden_state).log_softmax(-1)[0, :-1]
            unprocessed = float(raw[torch.arange(len(prompt) - 1, x.shape[1] - 1), x[0, len(prompt):]].sum())
            assert abs(unprocessed - policy[-1]) > 1.0


@pytest.fixture(scope="module")
def small_snapshot(hh_snapshot, tmp_path_factory) -> Path:
    """The real HH-RLHF snapshot cut to its first 16 train examples (8 prompts): a few steps' worth."""
    path = Path(shutil.copytree(hh_snapshot, tmp_path_factory.mktemp("small") / "snapshot"))
    stats = read_stats(path)
    parts = split_files(path, TRAIN)
    table = pq.read_table(parts[0]).slice(0, 16)
    for part in parts:
        part.unlink()
    write_split(path, TRAIN, table)
    write_stats(path, stats)  # sealed again, as a snapshot built by hand is: readers check its proof
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_few_training_steps_run_and_the_export_loads_with_peft(family, small_snapshot, tmp_path):
    from peft import PeftModel

    tok = tokenizer_of(family)
    model_dir = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(family, tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=2, micro_batch_size=4, max_length=192, max_prompt_length=128, checkpoint_every=0,
                         learning_rate=1e-2, lora_r=4, lora_alpha=8)  # the default QLoRA path: 4-bit NF4 base
    summary = train(small_snapshot, str(model_dir), out, config, log=lambda s: None)
    assert summary["steps"] == 2 and summary["examples"] == 16
    meta = json.loads((out / "thumbs_meta.json").read_text())
    assert meta["data"]["unsplittable"] == 0 and meta["data"]["examples"] == 16

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                                tokenize=True)["input_ids"]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(tuned(ids).logits, before)


def test_a_head_thumbs_does_not_know_is_refused_with_a_clear_error():
    from peft import LoraConfig, get_peft_model

    tok = tokenizer_of("llama")
    # HyperCLOVA X multiplies its logits by `logits_scaling` (Granite divides by a field of the same name).
    config = AutoConfig.for_model("hyperclovax", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                  initializer_range=0.5, logits_scaling=4.0)
    model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=2, target_modules="all-linear"))
    with pytest.raises(UnsupportedHead, match="'hyperclovax'.*head_spec"):
        Scorer(model, chunk_tokens=16)


def test_every_dropout_is_off_in_scoring_and_reference_passes(tmp_path):
    tok = tokenizer_of("llama")
    config = tiny_config("llama", tok, attention_dropout=0.3)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    ids = torch.tensor([[1, 415, 2936, 9060, 285, 1142, 28723, 2]])

    plain = AutoModelForCausalLM.from_pretrained(tmp_path).train()  # what a base in train mode does on its own
    with torch.no_grad():
        assert not torch.equal(plain(ids).logits, plain(ids).logits)  # attention dropout is live

    model = load_base(tmp_path, "none", torch.device("cpu")).train()  # training keeps train mode (see model.py)
    assert active_dropout(model) == [] and model.config.attention_dropout == 0.0
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
