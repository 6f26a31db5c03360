"""Training configuration: one typed dataclass; `training/kto.yaml` holds its commented defaults.

Precedence, lowest first: the dataclass defaults, a YAML file (`--config`), command-line flags.
The resolved config is saved in every adapter's `thumbs_meta.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from common.configfile import load_config

DEFAULTS_YAML = Path(__file__).with_name("kto.yaml")
QUANTIZE = ("nf4", "none")
Z0 = ("kl", "zero")
KL_PAIRS = ("batch", "sample")
OBJECTIVES = ("kto", "sft")
SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    objective: str = "kto"
    """'kto': KTO on both classes. 'sft': supervised fine-tuning on the desirable (thumbs-up) examples only,
    mean token negative log-likelihood of their completions; the baseline a team without KTO runs, and the
    first stage of KTO after SFT (merge that adapter into the base, then train KTO from the merged model)."""

    # KTO
    beta: float = 0.1
    """β: sharpness of the value function around z0. Paper: 0.1 to 1 without SFT, 0.01 to 0.1 after SFT."""
    desirable_weight: Optional[float] = None
    """λD; None takes the snapshot's stats.json (set from the class counts at curation). Set by hand (either
    weight), λD·nD / (λU·nU) is checked against [1, 4/3] on the train counts and a warning printed outside it."""
    undesirable_weight: Optional[float] = None
    """λU; None takes the snapshot's stats.json."""
    z0: str = "kl"
    """'kl': z0 estimated on mismatched pairs of each micro-batch. 'zero': the paper's z0 = 0 variant,
    sound only after SFT on the same data; it skips two forward passes per step."""
    kl_pairs: str = "batch"
    """Where z0's mismatched pairs come from. 'batch': the micro-batch's own examples (the paper's estimate).
    'sample': as many examples drawn at random from the whole split for each micro-batch, so z0 does not
    follow the micro-batch's length when micro-batches are length-grouped (costs nothing extra)."""

    # Optimisation
    learning_rate: float = 5e-5
    """AdamW peak learning rate; LoRA wants ~10x the paper's full fine-tuning 5e-6."""
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm; 0 disables clipping."""
    warmup_ratio: float = 0.1
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    schedule: str = "linear"
    """After warm-up: 'linear' or 'cosine' decay to 0, or 'constant'."""
    epochs: float = 1.0
    """Passes over the train split; fractions allowed."""
    max_steps: Optional[int] = None
    """Optimizer steps to run; overrides `epochs` when set."""
    micro_batch_size: int = 8
    """Examples per forward pass per process; at least 2 (z0 needs another prompt in the micro-batch)."""
    gradient_accumulation_steps: int = 1
    seed: int = 42

    # Data
    max_length: int = 1024
    """Prompt + completion tokens; longer completions keep their start."""
    max_prompt_length: int = 512
    """Longer prompts keep BOS, the system prompt and the template's headers; the oldest turns go first,
    then the start of the oldest remaining message."""
    length_group_size: int = 32
    """Micro-batches drawn from each length-sorted group (padding low); 1 disables grouping."""

    # Model
    quantize: str = "nf4"
    """'nf4': the base in 4-bit NF4 with double quantisation (QLoRA). 'none': unquantised base."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: Union[str, list] = "all-linear"
    """peft target modules; 'all-linear' is every linear layer but the output head."""
    gradient_checkpointing: Union[bool, str] = "auto"
    """Recompute activations in backward: less memory, more compute. 'auto': on for CUDA, where activations
    of big models fill the GPU; off on CPU, where the models are small and compute is the scarce thing."""
    logits_chunk_tokens: int = 256
    """Completion positions sent through the output head at once."""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'."""

    # Runs
    checkpoint_every: int = 50
    """Optimizer steps between resumable checkpoints; 0 disables them."""
    keep_checkpoints: int = 2
    cache_reference: bool = True
    """Cache reference log-probs beside the snapshot (keyed by base model, tokenizer and data)."""

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.kl_pairs not in KL_PAIRS:
            raise ValueError(f"kl_pairs must be 'batch' (the micro-batch's examples) or 'sample' (a random sample "
                             f"of the split), got {self.kl_pairs!r}")
        if self.z0 not in Z0:
            raise ValueError(f"z0 must be 'kl' (estimate it) or 'zero' (the after-SFT variant), got {self.z0!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.micro_batch_size < 2:
            raise ValueError("micro_batch_size must be at least 2: z0 pairs each prompt with another example's completion")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(f"need 0 < max_prompt_length ({self.max_prompt_length}) < max_length ({self.max_length}) "
                             "so every completion keeps at least one token")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.epochs <= 0 and self.max_steps is None:
            raise ValueError("epochs must be positive (or set max_steps)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must lie in [0, 1)")
        if self.gradient_accumulation_steps < 1 or self.length_group_size < 1 or self.logits_chunk_tokens < 1:
            raise ValueError("gradient_accumulation_steps, length_group_size and logits_chunk_tokens must be >= 1")
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise ValueError(f"gradient_checkpointing must be true, false or auto, got {self.gradient_checkpointing!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.adam_betas = tuple(self.adam_betas)

    @classmethod
    def load(cls, path: Optional[Path] = None, **overrides: Any) -> "TrainConfig":
        """Defaults, then the YAML at `path` (if any), then the non-None `overrides`."""
        return load_config(cls, path, "training config", **overrides)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out
