"""Reference point for thumbs' KTO trainer: TRL's KTOTrainer with a peft LoRA adapter, on CPU in float32
or on a CUDA GPU in bf16 (an NF4 base computes in bf16 there), optionally with Liger's kernels.

`run_trl` trains in a spawned child process (so its peak RSS and peak CUDA memory are its own) and
returns seconds per step, tokens per step, the first logged loss, the child's peak RSS and, on a GPU,
`torch.cuda.max_memory_allocated`. Token counts come from the batches
TRL actually fed to `training_step`: the matched rows (prompt + completion, the ones the loss is taken
on) and, separately, the mismatched KL rows TRL builds by rotating completions within each batch.

TRL 1.16's KTOConfig has no `max_prompt_length`. To honour it, the collator applies the rule of
earlier TRL releases: when prompt + completion exceed `max_length`, the prompt keeps its last
`max_prompt_length` tokens; TRL's own collator then cuts each row to `max_length` from the right.

    python benchmarks/trl_baseline.py     # ~29M-parameter random Llama, 160 HH-RLHF examples, 3 steps
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_var, "1")

import gzip
import json
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HH_TEST = REPO / "tests" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
GPT2_TOKENIZER = REPO / "evaluation" / "world" / "gpt2-tokenizer"
ANSWER_MARKER = "\n\nAssistant:"


def run_trl(
    model_dir: str,
    tokenizer_dir: str,
    examples: list[dict[str, Any]],
    *,
    steps: int,
    batch_size: int,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    max_length: int,
    max_prompt_length: int,
    learning_rate: float,
    seed: int,
    quantize_4bit: bool = False,
    precompute_ref: bool = False,
    gradient_checkpointing: bool = True,
    device: str = "cpu",
    liger: bool = False,
    output_dir: str,
) -> dict[str, Any]:
    """Train `steps` optimizer steps with TRL's KTOTrainer + LoRA (all linear layers) in a spawned child.

    `examples` are {"prompt": str, "completion": str, "label": bool}, fed in the given order (TRL's KTO
    sampler is sequential). `gradient_checkpointing` defaults to True, TRL's own default. Returns the
    figures described in the module docstring; `peak_rss_bytes` is the child's ru_maxrss. `device` is
    'cpu' (float32) or 'cuda' (bf16 mixed precision, bf16 compute under NF4). `liger` sets TRL's
    `use_liger_kernel` (Liger's RMSNorm, RoPE and SwiGLU kernels; TRL keeps its own fused head).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    kwargs = dict(
        model_dir=str(model_dir), tokenizer_dir=str(tokenizer_dir), examples=list(examples), steps=steps,
        batch_size=batch_size, beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, max_length=max_length,
        max_prompt_length=max_prompt_length, learning_rate=learning_rate, seed=seed, quantize_4bit=quantize_4bit,
        precompute_ref=precompute_ref, gradient_checkpointing=gradient_checkpointing, device=device, liger=liger,
        output_dir=str(output_dir),
    )
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_train_in_child, **kwargs).result()


def _train_in_child(
    *, model_dir, tokenizer_dir, examples, steps, batch_size, beta, desirable_weight, undesirable_weight, lora_r,
    lora_alpha, lora_dropout, max_length, max_prompt_length, learning_rate, seed, quantize_4bit, precompute_ref,
    gradient_checkpointing, device, liger, output_dir,
) -> dict[str, Any]:
    os.environ.setdefault("HF_DATASETS_CACHE", str(Path(output_dir) / "hf_datasets"))
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    hf_logging.set_verbosity_error()

    class PromptTruncatingCollator(DataCollatorForUnpairedPreference):
        """TRL's collator, after cutting over-long rows' prompts to their last `max_prompt_length` tokens."""

        def torch_call(self, batch):
            cut = []
            for ex in batch:
                ex = dict(ex)
                if len(ex["prompt_ids"]) + len(ex["completion_ids"]) > max_length:
                    ex["prompt_ids"] = ex["prompt_ids"][-max_prompt_length:]
                cut.append(ex)
            return super().torch_call(cut)

    class StepClock(TrainerCallback):
        """Wall time between consecutive optimizer steps, and every logged loss."""

        def __init__(self):
            self.marks, self.losses = [], []

        def on_train_begin(self, args, state, control, **kw):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    class CountingKTOTrainer(KTOTrainer):
        """Records the real (attention-mask) and padded token counts of every batch trained on."""

        def training_step(self, model, inputs, *args, **kw):
            self.batch_tokens.append({
                "real": int(inputs["attention_mask"].sum()),
                "padded": inputs["input_ids"].numel(),
                "kl_real": int(inputs["KL_attention_mask"].sum()) if "KL_attention_mask" in inputs else 0,
                "kl_padded": inputs["KL_input_ids"].numel() if "KL_input_ids" in inputs else 0,
            })
            return super().training_step(model, inputs, *args, **kw)

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no CUDA GPU")
    dtype = torch.bfloat16 if cuda else torch.float32  # CPUs without bf16 units crawl in bf16
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = KTOConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, learning_rate=learning_rate, beta=beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, max_length=max_length, precompute_ref_log_probs=precompute_ref,
        gradient_checkpointing=gradient_checkpointing, disable_dropout=True, use_cpu=not cuda, bf16=cuda, fp16=False,
        use_liger_kernel=liger, model_init_kwargs={"dtype": dtype}, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, seed=seed, data_seed=seed,
    )
    quantization = None
    if quantize_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    lora = LoraConfig(
        r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_list(
        [{"prompt": e["prompt"], "completion": e["completion"], "label": bool(e["label"])} for e in examples]
    )
    clock = StepClock()
    t0 = time.perf_counter()
    trainer = CountingKTOTrainer(
        model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
        quantization_config=quantization, callbacks=[clock],
        data_collator=PromptTruncatingCollator(pad_token_id=tokenizer.pad_token_id, max_length=max_length),
    )
    trainer.batch_tokens = []
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - t1

    step_s = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    tokens = trainer.batch_tokens[: len(step_s)]
    skip = 1 if len(step_s) > 1 else 0  # the first step is warm-up
    timed_s, timed_tokens = sum(step_s[skip:]), tokens[skip:]
    if not timed_tokens:
        raise RuntimeError(f"TRL recorded {len(tokens)} batch(es) for {len(step_s)} step(s): nothing to time past the "
                           "warm-up step; give it more steps")

    def per_step(key):
        return sum(t[key] for t in timed_tokens) / len(timed_tokens)

    real, kl_real = per_step("real"), per_step("kl_real")
    model = trainer.model
    return {
        "steps": len(step_s),
        "seconds_per_step": timed_s / len(timed_tokens),
        "step_seconds": step_s,
        "train_wall_seconds": wall_s,
        "setup_seconds": setup_s,
        "real_tokens_per_step": real,
        "padded_tokens_per_step": per_step("padded"),
        "kl_real_tokens_per_step": kl_real,
        "kl_padded_tokens_per_step": per_step("kl_padded"),
        "real_tokens_per_second": real * len(timed_tokens) / timed_s,
        "real_tokens_per_second_with_kl": (real + kl_real) * len(timed_tokens) / timed_s,
        "loss_step0": clock.losses[0] if clock.losses else None,
        "losses": clock.losses,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "quantize_4bit": quantize_4bit,
        "precompute_ref": precompute_ref,
        "gradient_checkpointing": gradient_checkpointing,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "liger": liger,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


def hh_examples(path: Path = HH_TEST, pairs: int = 80) -> list[dict[str, Any]]:
    """The first `pairs` usable HH-RLHF pairs as KTO examples, desirable then undesirable for each pair.

    The prompt is the shared dialogue up to and including its last shared '\\n\\nAssistant:'; each
    completion is the rest of its dialogue, kept verbatim (it starts with a space).
    """
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            chosen, rejected = record["chosen"], record["rejected"]
            cut = os.path.commonprefix([chosen, rejected]).rfind(ANSWER_MARKER)
            if cut < 0:
                continue
            start = cut + len(ANSWER_MARKER)
            if not chosen[start:].strip() or not rejected[start:].strip():
                continue
            out.append({"prompt": chosen[:start], "completion": chosen[start:], "label": True})
            out.append({"prompt": chosen[:start], "completion": rejected[start:], "label": False})
            if len(out) == 2 * pairs:
                break
    return out


def build_tiny_llama(directory: Path, seed: int = 0) -> int:
    """A ~29M-parameter Llama with random weights and the GPT-2 tokenizer, saved to `directory`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=50257, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="trl-baseline-") as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_tiny_llama(model_dir)
        examples = hh_examples()
        print(f"model: {n_params / 1e6:.1f}M parameters; {len(examples)} examples")
        result = run_trl(
            model_dir, model_dir, examples, steps=3, batch_size=8, beta=0.1, desirable_weight=1.0,
            undesirable_weight=1.0, lora_r=16, lora_alpha=32, lora_dropout=0.0, max_length=512,
            max_prompt_length=384, learning_rate=5e-5, seed=0, output_dir=str(Path(tmp) / "out"),
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
