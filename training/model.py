"""The base model (4-bit NF4 or unquantised) with LoRA adapters, and the log-prob scorer over it.

The reference model is this same model with its adapter switched off (`reference_mode`), so the
base's weights live in memory once.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from training.config import TrainConfig
from training.data import Batch
from training.logprobs import completion_logps

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def resolve_model_path(base_model: str) -> Path:
    """A local directory for a path or a hub id already in the local cache; nothing is downloaded."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(base_model, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as err:
        raise FileNotFoundError(f"base model {base_model!r} is neither a local directory nor in the local "
                                f"Hugging Face cache (thumbs never downloads): {err}") from err


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files' names and bytes: which base an adapter (and a reference cache) belongs to."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no weight files under {model_dir}")
    for path in files:
        h.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def pick_device(device: str = "auto") -> torch.device:
    """'auto' takes the GPU when there is one; 'cuda' insists on it; 'cpu' never uses it."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for but torch sees no CUDA GPU")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    # CPUs without bf16 units run bf16 ~30x slower than float32; GPUs want bf16.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked everywhere; any id will do
    return tokenizer


def nf4_unavailable(device: torch.device) -> str | None:
    """Why 4-bit NF4 cannot run on `device` here (bitsandbytes missing or without a backend for it), or None."""
    try:
        import bitsandbytes.functional as bnbf

        weights, state = bnbf.quantize_4bit(torch.ones(64, 64, device=device), quant_type="nf4")
        bnbf.dequantize_4bit(weights, state)
    except Exception as err:  # noqa: BLE001  (ImportError, or a bitsandbytes build without this device)
        return f"{type(err).__name__}: {err}"
    return None


def load_base(model_dir: Path, quantize: str, device: torch.device) -> nn.Module:
    """The frozen base as training sees it: NF4 + double quantisation or unquantised, dropout off."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(device)
    kwargs = {"dtype": dtype}
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if quantize == "none":
        model.to(device)
    # Dropout off in the base: the policy and the (cached) reference must see the same network.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.requires_grad_(False)
    return model


def load_model(model_dir: Path, config: TrainConfig, device: torch.device) -> nn.Module:
    """The base (quantised as configured, dropout off, frozen) wrapped in trainable LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    model = load_base(model_dir, config.quantize, device)
    # Train mode for good (dropout is off anyway): in eval mode bitsandbytes repacks 4-bit CPU weights for
    # bf16 inference on the first no-grad call, which rounds differently and breaks the next backward.
    model.train()
    model.config.use_cache = False
    if config.gradient_checkpointing is True or (config.gradient_checkpointing == "auto" and device.type == "cuda"):
        no_reentrant = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=no_reentrant)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=no_reentrant)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # adapters train in float32 whatever the compute dtype
    return model


class Scorer(nn.Module):
    """Summed completion log-probs of a batch under the (peft-wrapped) causal LM."""

    def __init__(self, model: nn.Module, chunk_tokens: int):
        super().__init__()
        self.model = model
        hf = model.get_base_model()
        self.backbone = getattr(hf, hf.base_model_prefix)
        self.head = hf.get_output_embeddings()
        self.chunk_tokens = chunk_tokens
        self.softcap = getattr(hf.config, "final_logit_softcapping", None)
        self.autocast = next(hf.parameters()).device.type == "cuda"

    def forward(self, batch: Batch) -> torch.Tensor:  # (B,)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            hidden = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   use_cache=False).last_hidden_state  # (B, T, C)
            return completion_logps(hidden, self.head, batch.input_ids, batch.completion_mask,
                                    self.chunk_tokens, self.softcap)

    @contextlib.contextmanager
    def reference_mode(self) -> Iterator[None]:
        """The reference policy: the same weights with the LoRA adapter switched off."""
        with self.model.disable_adapter():
            yield

    def trainable_parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]
