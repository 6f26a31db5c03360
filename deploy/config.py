"""ExportConfig: how production is written for serving, and which vLLM server is told. Its own module, free of
torch, so the command line and the flow's configuration load it in a blink."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from common.configfile import config
from deploy import vllm_rules

FORMATS = ("peft", "merged")
DTYPES = ("bfloat16", "float16", "float32")


@config
class ExportConfig:
    """How production is exported for serving, and which vLLM server to tell."""
    format: Literal[FORMATS + ("none",)] = "peft"
    """'peft': the adapter with serving.json (vLLM --lora-modules); 'merged': full weights merged into the base;
    'none': the nightly exports nothing."""
    out: Optional[str] = None
    """Serving folder: new, empty, or an earlier thumbs export, switched to the new one in one step (the one
    before kept as .OUT.previous). The nightly's default is WORKDIR/serving."""
    dtype: Literal[DTYPES] = "bfloat16"
    """merged only: the weights' dtype."""
    max_lora_rank: Optional[Literal[vllm_rules.MAX_LORA_RANKS]] = None
    """peft: the vLLM server's --max-lora-rank; an adapter of higher rank is refused at export (default: vLLM's
    largest)."""
    notify: Optional[str] = None
    """peft: URL of a running vLLM OpenAI server (http://host:8000) that serves production: the export is loaded
    there under notify_alias, checked, then the previous version retired."""
    notify_alias: str = Field("thumbs", min_length=1)
    """With notify: the model name the server's clients request."""

    def __post_init__(self) -> None:
        if self.notify and self.format != "peft":
            raise ValueError(f"notify hot-swaps a LoRA adapter into vLLM: it needs format 'peft', not {self.format!r}")
