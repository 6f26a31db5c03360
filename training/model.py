"""The base model (4-bit NF4 or unquantised) with LoRA adapters, and the log-prob scorer over it.

The reference model is this same model with its adapter switched off (`reference_mode`), so the
base's weights live in memory once. Every dropout of the base is off (config fields such as
`attention_dropout`, read by attention kernels, as well as `nn.Dropout` modules), so the policy, the
cached reference and evaluation all see one deterministic network; only LoRA's own dropout trains.

The scorer computes log-probs from the backbone's hidden states and the output head, so it must do
to the head's output what the model's forward does (`head_spec`): Cohere multiplies by `logit_scale`,
Granite divides by `logits_scaling`, Gemma-2/3 soft-cap. `check_head` compares the two on a few tokens
and refuses, with a clear error, a model whose forward does anything else to its logits.

A base-model folder is checked before it is used (`check_base_model`): config.json, a tokenizer
vocabulary and the weight files must be there, every JSON file must parse, and each safetensors file must
be as long as its header says. A missing or damaged file gives one `BaseModelError` naming it (no tensor
is read for this), instead of a tokenizer with no vocabulary whose empty encodings get blamed on the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from training import gguf
from training.config import TrainConfig
from training.data import Batch
from training.logprobs import completion_logps, head_logits

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Files beside the weights that change what the model computes or how text becomes ids.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
               "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
# Head processing by model type, as each family's ForCausalLM.forward does it (transformers 5.x):
DIVIDES_BY_LOGITS_SCALING = {"granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid",
                             "granitemoeshared"}  # logits = lm_head(h) / config.logits_scaling
MULTIPLIES_BY_LOGIT_SCALE = {"cohere", "cohere2", "cohere2_moe", "cohere_compass"}  # logits = lm_head(h) * logit_scale


# Any one of these holds a tokenizer's vocabulary; without one, transformers builds an empty tokenizer.
TOKENIZER_VOCABS = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                    "sentencepiece.bpe.model")


class UnsupportedHead(RuntimeError):
    """The model's forward does something to its logits that thumbs does not reproduce."""


class BaseModelError(ValueError):
    """The base-model folder lacks a file or holds a damaged one; the message names it."""

    def __init__(self, model_dir: Path, why: str):
        super().__init__(f"base model folder {model_dir}: {why}. Restore the folder from where it came from (e.g. "
                         f"`hf download MODEL_ID --local-dir {model_dir} --force-download`, or copy it again)")


def resolve_model_path(base_model: str) -> Path:
    """A local directory for a path, a GGUF file (its dequantised folder, training/gguf.py) or a hub id already in
    the local cache; nothing is downloaded."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        return path
    if gguf.is_gguf(path):
        return gguf.dequantized(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(base_model, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as err:
        raise FileNotFoundError(f"base model {base_model!r} is neither a local directory nor in the local "
                                f"Hugging Face cache (thumbs never downloads): {err}") from err


def weight_files(model_dir: Path) -> list:
    """Every file under `model_dir` whose name says it holds weights, in a stable order."""
    return sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files' names and bytes: which base an adapter (and a reference cache) belongs to."""
    h = hashlib.sha256()
    files = weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"no weight files under {model_dir}")
    for path in files:
        h.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def model_files_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the tokenizer files: what the weights' hash misses."""
    h = hashlib.sha256()
    for name in MODEL_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
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


def check_base_model(model_dir: Path, tokenizer: bool = True, weights: bool = True) -> None:
    """Refuse a base-model folder with a missing or damaged file, naming it: the tokenizer's files, and
    config.json and the weight files. Reads headers only, so it costs milliseconds."""
    model_dir = Path(model_dir)
    wanted = [model_dir / name for name in MODEL_FILES + ("generation_config.json",)]
    for path in wanted + sorted(model_dir.glob("*.index.json")):
        if path.suffix == ".json" and path.is_file():
            try:
                json.loads(path.read_bytes())
            except (OSError, ValueError) as err:
                raise BaseModelError(model_dir, f"{path.name} is damaged (not valid JSON: {err})") from err
    if tokenizer and not any((model_dir / name).is_file() for name in TOKENIZER_VOCABS):
        raise BaseModelError(model_dir, f"tokenizer.json is missing (no tokenizer vocabulary: none of "
                                        f"{', '.join(TOKENIZER_VOCABS)})")
    if weights:
        _check_weights(model_dir)


def _check_weights(model_dir: Path) -> None:
    config = model_dir / "config.json"
    if not config.is_file():
        raise BaseModelError(model_dir, "config.json is missing")
    parsed = json.loads(config.read_bytes())
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise BaseModelError(model_dir, "config.json is damaged (no model_type)")
    for index in sorted(model_dir.glob("*.index.json")):  # a sharded checkpoint: every shard it names
        weight_map = json.loads(index.read_bytes())
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict):
            raise BaseModelError(model_dir, f"{index.name} is damaged (no weight_map)")
        shards = {str(name) for name in weight_map.values()}
        for name in sorted(shards):
            if not (model_dir / name).is_file():
                raise BaseModelError(model_dir, f"{name} is missing (named by {index.name})")
    files = weight_files(model_dir)
    if not files:
        raise BaseModelError(model_dir, f"no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for path in files:
        why = safetensors_damage(path) if path.suffix == ".safetensors" else None
        if why:
            raise BaseModelError(model_dir, f"{path.relative_to(model_dir)} {why}")


def safetensors_damage(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, judged from its header and length; None if it is whole."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else size
        if length > size - 8:
            return f"is truncated ({size:,} bytes, shorter than its own header)"
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "is damaged (its header is not a safetensors header)"
    if 8 + length + end != size:
        return f"is truncated or damaged ({size:,} bytes where its header describes {8 + length + end:,})"
    return None


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    check_base_model(model_dir, weights=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except ImportError:  # a library the tokenizer needs (sentencepiece, tiktoken): not the folder's fault
        raise
    except Exception as err:  # noqa: BLE001  (the tokenizers library raises a bare Exception on a damaged file)
        raise BaseModelError(model_dir, f"its tokenizer does not load ({type(err).__name__}: {err})") from err
    if len(tokenizer) < 2 or not tokenizer.encode("Hello world", add_special_tokens=False):
        raise BaseModelError(model_dir, "its tokenizer turns text into no tokens (its vocabulary file is damaged)")
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
    from safetensors import SafetensorError
    from transformers import AutoConfig

    check_base_model(model_dir, tokenizer=False)
    try:
        config = AutoConfig.from_pretrained(model_dir)
        disable_dropout_config(config)  # before the modules exist: attention layers copy it at construction
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, **kwargs)
    except (OSError, SafetensorError) as err:  # not RuntimeError or ValueError: out of memory is not damage
        raise BaseModelError(model_dir, f"the model does not load ({type(err).__name__}: {err})") from err
    if quantize == "none":
        model.to(device)
    disable_dropout(model)
    model.requires_grad_(False)
    return model


def _is_dropout_field(name: str, value) -> bool:
    return isinstance(value, float) and not isinstance(value, bool) and value > 0 and (
        "dropout" in name or name.endswith("pdrop"))


def disable_dropout_config(config) -> list:
    """Zero every dropout probability of a transformers config and its sub-configs; the names zeroed."""
    zeroed = []
    for name, value in list(vars(config).items()):
        if _is_dropout_field(name, value):
            setattr(config, name, 0.0)
            zeroed.append(name)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config (text_config, ...)
            zeroed += [f"{name}.{n}" for n in disable_dropout_config(value)]
    return zeroed


def disable_dropout(model: nn.Module) -> None:
    """Every dropout of a built model off: nn.Dropout modules, and float dropout attributes that kernels read
    (e.g. an attention layer's `attention_dropout`, passed to scaled_dot_product_attention in train mode)."""
    disable_dropout_config(model.config)
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout_field(name, value):
                setattr(module, name, 0.0)


def active_dropout(model: nn.Module, skip: str = "lora_dropout") -> list:
    """Names of dropouts still active (LoRA's own, which trains on purpose, skipped)."""
    found = []
    for path, module in model.named_modules():
        if skip in path:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            found.append(path)
        found += [f"{path}.{n}" for n, v in vars(module).items() if _is_dropout_field(n, v)]
    return found


def head_spec(hf: nn.Module) -> tuple:
    """(softcap, scale): what the model's forward does to the head's output before the softmax."""
    config = hf.config
    model_type = getattr(config, "model_type", "")
    softcap = getattr(config, "final_logit_softcapping", None) or None
    scale = 1.0
    if model_type in DIVIDES_BY_LOGITS_SCALING:
        scale = 1.0 / float(config.logits_scaling)
    elif model_type in MULTIPLIES_BY_LOGIT_SCALE:
        scale = float(getattr(hf, "logit_scale", config.logit_scale))
    return softcap, scale


def check_head(hf: nn.Module, backbone: nn.Module, head: nn.Module, softcap, scale, autocast: bool) -> None:
    """Compare the model's own logits with backbone → head → (scale, softcap) on a few tokens; refuse a mismatch.

    Logits are compared after removing each row's mean (the softmax ignores it), relative to their spread:
    a missed multiplier or cap shows as an error of order 1, rounding as 1e-6 (float32) or 1e-3 (bf16).
    """
    vocab = getattr(head, "out_features", None) or hf.config.vocab_size
    device = next(hf.parameters()).device
    ids = (torch.arange(1, 9, device=device) * 7919 % max(2, vocab - 1) + 1)[None]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        own = hf(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float()
        hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
        ours = head_logits(head(hidden), softcap, scale).float()
    own, ours = own - own.mean(-1, keepdim=True), ours - ours.mean(-1, keepdim=True)
    error = float((own - ours).abs().max() / own.abs().max().clamp_min(1e-12))
    tolerance = 3e-2 if autocast else 1e-4
    if not error <= tolerance:  # also refuses NaN
        model_type = getattr(hf.config, "model_type", "?")
        raise UnsupportedHead(
            f"model type {model_type!r}: its forward does something to the logits that thumbs does not reproduce "
            f"(relative difference {error:.3g} between the model's logits and backbone → head with scale {scale:g}, "
            f"softcap {softcap}). thumbs knows: final_logit_softcapping, Granite's logits_scaling, Cohere's "
            "logit_scale. Add this model type's head processing to training/model.py:head_spec before training it")


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
        self.softcap, self.scale = head_spec(hf)
        self.autocast = next(hf.parameters()).device.type == "cuda"
        with model.disable_adapter():  # the head's semantics, not the adapter's (LoRA dropout stays out of it)
            check_head(hf, self.backbone, self.head, self.softcap, self.scale, self.autocast)

    def forward(self, batch: Batch) -> torch.Tensor:  # (B,)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            hidden = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   use_cache=False).last_hidden_state  # (B, T, C)
            return completion_logps(hidden, self.head, batch.input_ids, batch.completion_mask,
                                    self.chunk_tokens, self.softcap, self.scale)

    @contextlib.contextmanager
    def reference_mode(self) -> Iterator[None]:
        """The reference policy: the same weights with the LoRA adapter switched off."""
        with self.model.disable_adapter():
            yield

    def trainable_parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]
