"""The nightly retrain's parameters: one typed model, so the Prefect UI shows them as a form.

Every field has a default and a description; a `--params FILE` (YAML or JSON) for `thumbs run`, a
deployment's defaults and the UI's "Custom run" all fill the same model. Values are read as the stages'
configs read theirs (common/configfile.py's CONFIG): inf, nan and `true` for a number are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from common.configfile import CONFIG, refuse_bool_for_number


class LoraSettings(BaseModel):
    """Empty fields keep the training YAML's value (or its default)."""
    model_config = CONFIG
    refuse_bool_for_number = field_validator("*", mode="before")(classmethod(refuse_bool_for_number))

    r: Optional[int] = Field(None, ge=1, le=512, description="LoRA rank (default 16).")
    alpha: Optional[int] = Field(None, ge=1, description="LoRA alpha; the update is scaled by alpha / r (default 32).")
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0, description="Dropout on the LoRA path (default 0).")


class RetrainParams(BaseModel):
    model_config = CONFIG  # a misspelt field in --params or a custom run is an error, not ignored
    refuse_bool_for_number = field_validator("*", mode="before")(classmethod(refuse_bool_for_number))

    # Data
    sources: List[str] = Field(default_factory=list, description=(
        "Feedback logs to ingest: JSONL(.gz) files, folders or glob patterns. Files already in the lake are "
        "skipped, so pointing at the whole log folder every night is fine."))
    source_format: Literal["events", "pairs", "hh"] = Field("events", description="Format of the sources.")
    workdir: str = Field(".thumbs", min_length=1, description="Root for lake/, snapshots/, runs/ and registry/ unless set below.")
    lake: Optional[str] = Field(None, description="Parquet lake folder or fsspec URL, e.g. s3://bucket/lake "
                                                  "(default WORKDIR/lake).")
    snapshots: Optional[str] = Field(None, description="Folder or fsspec URL of curated snapshots "
                                                       "(default WORKDIR/snapshots).")
    registry: Optional[str] = Field(None, description="Registry folder or fsspec URL (default WORKDIR/registry).")
    model_name: str = Field("default", min_length=1, description="Model name inside the registry; one retrain at a time per name.")
    lock_timeout_s: float = Field(6 * 3600, gt=0, description=(
        "Fail if another retrain of the same model holds the lock for longer than this (seconds)."))
    window_days: Optional[int] = Field(None, ge=1, description=(
        "Train on feedback from the last N days (by event date); empty = the whole lake."))
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Share of prompts held out for evaluation.")
    scrub_pii: bool = Field(False, description=(
        "Mask e-mail addresses and phone numbers in prompts and completions at ingest ([EMAIL], [PHONE])."))
    insecure_dev_key: bool = Field(False, description=(
        "Pseudonymise user ids with the public development key (demos only); production sets THUMBS_PSEUDONYM_KEY."))

    # Training
    base_model: str = Field(..., min_length=1, description="Base model: a local folder, or a hub id already in the local cache.")
    train_config: Optional[str] = Field(None, description="YAML of training fields (training/kto.yaml); the fields "
                                                          "below override it.")
    beta: Optional[float] = Field(None, gt=0, description="β of the KTO value function (default 0.1).")
    desirable_weight: Optional[float] = Field(None, gt=0, description="λD override (default: from class counts).")
    undesirable_weight: Optional[float] = Field(None, gt=0, description="λU override (default: from class counts).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter settings.")
    learning_rate: Optional[float] = Field(None, gt=0, description="AdamW peak learning rate (default 5e-5).")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps (default: one epoch).")
    epochs: Optional[float] = Field(None, gt=0, description="Passes over the train split (default 1).")
    micro_batch_size: Optional[int] = Field(None, ge=2, description="Examples per forward pass (default 8).")
    quantize: Optional[Literal["nf4", "none"]] = Field(None, description="nf4 = QLoRA (default), none = plain LoRA.")
    device: Optional[Literal["auto", "cpu", "cuda"]] = Field(None, description=(
        "Where training and evaluation run (default auto: the GPU when there is one)."))
    train_deployment: Optional[str] = Field(None, description=(
        "Run training as this deployment (e.g. 'thumbs-train/train' on a GPU work pool) instead of in this "
        "flow's process. The run folder must be on storage both can reach."))
    train_timeout_s: float = Field(12 * 3600, gt=0, description=(
        "With train_deployment: fail the run if training has not finished after this long (seconds), "
        "e.g. because no worker serves the GPU pool."))

    # Evaluation, promotion, export
    suites: List[str] = Field(default_factory=list, description="Task-suite JSONL files checked at evaluation.")
    generation_prompts: int = Field(32, ge=0, description="Eval prompts answered to measure length drift.")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer at evaluation.")
    promotion_policy: Optional[str] = Field(None, description="Promotion policy YAML (evaluation/promotion.yaml).")
    export_format: Literal["peft", "merged", "none"] = Field("peft", description="How production is exported.")
    export_dir: Optional[str] = Field(None, description="Where production is exported (default WORKDIR/serving).")
    notify: Optional[str] = Field(None, description=(
        "URL of a running vLLM OpenAI server (http://host:8000) that serves production: after the export "
        "(peft) it is loaded there under notify_alias, checked, then the previous version retired. If that "
        "fails the run fails at export; production and the export stand, the server keeps the old version, "
        "and the next run tries again."))
    notify_alias: str = Field("thumbs", min_length=1, description="With notify: the model name the server's clients request.")
    max_lora_rank: Optional[Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]] = Field(None, description=(
        "peft export: the vLLM server's --max-lora-rank; an adapter of higher rank is refused at export "
        "(default: vLLM's largest, 512)."))

    @model_validator(mode="after")
    def _notify_needs_peft(self) -> "RetrainParams":
        if self.notify and self.export_format != "peft":
            raise ValueError(f"notify hot-swaps a LoRA adapter into vLLM: it needs export_format 'peft', "
                             f"not {self.export_format!r}")
        return self

    def path(self, field: str) -> str:
        value = getattr(self, field, None)
        return str(value) if value else str(Path(self.workdir) / field.replace("export_dir", "serving"))

    def curate_config(self):
        """The CurateConfig these parameters ask for: one place, so the curate task and its cache key agree."""
        from ingest.curate.rules import CurateConfig

        return CurateConfig(eval_fraction=self.eval_fraction)

    def train_overrides(self) -> dict:
        """TrainConfig fields set here (None = keep the YAML's or the default)."""
        fields = {"beta": self.beta, "desirable_weight": self.desirable_weight,
                  "undesirable_weight": self.undesirable_weight, "learning_rate": self.learning_rate,
                  "max_steps": self.max_steps, "epochs": self.epochs, "micro_batch_size": self.micro_batch_size,
                  "quantize": self.quantize, "device": self.device,
                  "lora_r": self.lora.r, "lora_alpha": self.lora.alpha, "lora_dropout": self.lora.dropout}
        return {k: v for k, v in fields.items() if v is not None}
