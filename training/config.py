"""Training configuration: one typed dataclass; `training/kto.yaml` holds its commented defaults.

Precedence, lowest first: the dataclass defaults, a YAML file (`--config`), command-line flags.
Each field is declared once, with its type, default, range (`Field(...)`) and the docstring under it; every
value is checked at load, whichever layer set it (common/configfile.py says how).
The resolved config is saved in every adapter's `thumbs_meta.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, List, Literal, Optional, Tuple, Union

from pydantic import Field

from common.configfile import config, load_config

DEFAULTS_YAML = Path(__file__).with_name("kto.yaml")
QUANTIZE = ("nf4", "none")
Z0 = ("kl", "zero")
KL_PAIRS = ("batch", "sample")
OBJECTIVES = ("kto", "sft")
SCHEDULES = ("linear", "cosine", "constant")
AdamBeta = Annotated[float, Field(ge=0.0, lt=1.0)]


@config
class TrainConfig:
    objective: Literal[OBJECTIVES] = "kto"
    """'kto': KTO on both classes. 'sft': supervised fine-tuning on the desirable (thumbs-up) examples only,
    mean token negative log-likelihood of their completions; the baseline a team without KTO runs, and the
    first stage of KTO after SFT (merge that adapter into the base, then train KTO from the merged model)."""

    # KTO
    beta: float = Field(0.1, gt=0)
    """β: sharpness of the value function around z0. Paper: 0.1 to 1 without SFT, 0.01 to 0.1 after SFT."""
    desirable_weight: Optional[float] = Field(None, gt=0)
    """λD; None takes the snapshot's stats.json (set from the class counts at curation). Set by hand (either
    weight), λD·nD / (λU·nU) is checked against [1, 4/3] on the train counts and a warning printed outside it."""
    undesirable_weight: Optional[float] = Field(None, gt=0)
    """λU; None takes the snapshot's stats.json."""
    z0: Literal[Z0] = "kl"
    """'kl': z0 estimated on mismatched pairs of each micro-batch. 'zero': the paper's z0 = 0 variant,
    sound only after SFT on the same data; it skips two forward passes per step."""
    kl_pairs: Literal[KL_PAIRS] = "batch"
    """Where z0's mismatched pairs come from. 'batch': the micro-batch's own examples (the paper's estimate).
    'sample': as many examples drawn at random from the whole split for each micro-batch, so z0 does not
    follow the micro-batch's length when micro-batches are length-grouped (costs nothing extra)."""

    # Optimisation
    learning_rate: float = Field(5e-5, gt=0)
    """AdamW peak learning rate; LoRA wants ~10x the paper's full fine-tuning 5e-6."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay of the adapter's weights."""
    adam_betas: Tuple[AdamBeta, AdamBeta] = (0.9, 0.999)
    """AdamW's decay rates of the gradient's first and second moments."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradients are clipped to this global L2 norm; 0 disables clipping."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    schedule: Literal[SCHEDULES] = "linear"
    """After warm-up: 'linear' or 'cosine' decay to 0, or 'constant'."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the train split; fractions allowed."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Optimizer steps to run; overrides `epochs` when set."""
    micro_batch_size: int = Field(8, ge=2)
    """Examples per forward pass per process; at least 2 (z0 needs another prompt in the micro-batch)."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches whose gradients add up to one optimizer step."""
    seed: int = Field(42, ge=0, lt=2**32)
    """Seeds LoRA's initial weights, the data order and z0's sampled pairs: a run is repeatable."""

    # Data
    max_length: int = Field(1024, ge=2)
    """Prompt + completion tokens; longer completions keep their start."""
    max_prompt_length: int = Field(512, ge=1)
    """Longer prompts keep BOS, the system prompt and the template's headers; the oldest turns go first,
    then the start of the oldest remaining message."""
    length_group_size: int = Field(32, ge=1)
    """Micro-batches drawn from each length-sorted group (padding low); 1 disables grouping."""

    # Model
    quantize: Literal[QUANTIZE] = "nf4"
    """'nf4': the base in 4-bit NF4 with double quantisation (QLoRA). 'none': unquantised base."""
    lora_r: int = Field(16, ge=1)
    """LoRA rank: the adapter's update to each weight has this rank."""
    lora_alpha: int = Field(32, ge=1)
    """LoRA alpha; the update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA path."""
    target_modules: Union[str, List[str]] = "all-linear"
    """peft target modules; 'all-linear' is every linear layer but the output head."""
    gradient_checkpointing: Union[bool, Literal["auto"]] = "auto"
    """Recompute activations in backward: less memory, more compute. 'auto': on for CUDA, where activations
    of big models fill the GPU; off on CPU, where the models are small and compute is the scarce thing."""
    logits_chunk_tokens: int = Field(256, ge=1)
    """Completion positions sent through the output head at once."""
    tokens_per_pass: Optional[int] = Field(None, ge=1)
    """Padded positions (rows x longest row) one forward pass holds: a micro-batch is run as length-sorted
    passes within it, whose gradients add up to the same step; a longer example is a pass alone. Bounds
    activation memory (~1.3 MB a position on SmolLM2-135M in float32, no checkpointing) and cuts padding.
    None: 1024 on CPU (smaller passes were faster there: BENCHMARKS.md), 16384 on CUDA (big passes keep a
    GPU busy; its activations are checkpointed)."""

    def pass_tokens(self, device_type: str) -> int:
        """`tokens_per_pass` on a device of this type."""
        if self.tokens_per_pass is None:
            return 16384 if device_type == "cuda" else 1024
        return self.tokens_per_pass
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'."""

    # Runs
    checkpoint_every: int = Field(50, ge=0)
    """Optimizer steps between resumable checkpoints; 0 disables them."""
    keep_checkpoints: int = Field(2, ge=0)
    """Newest checkpoints kept in the run folder; 0 keeps them all."""
    cache_reference: bool = True
    """Cache reference log-probs beside the snapshot (keyed by base model, tokenizer and data)."""

    def __post_init__(self) -> None:
        # Types and single-field ranges are the declarations' (checked before this runs); here: combinations.
        if not self.max_prompt_length < self.max_length:
            raise ValueError(f"need 0 < max_prompt_length ({self.max_prompt_length}) < max_length ({self.max_length}) "
                             "so every completion keeps at least one token")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module, or be 'all-linear'")

    @classmethod
    def load(cls, path: Optional[Path] = None, **overrides: Any) -> "TrainConfig":
        """Defaults, then the YAML at `path` (if any), then the non-None `overrides`."""
        return load_config(cls, path, "training config", section="train", **overrides)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out
