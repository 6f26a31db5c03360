"""`thumbs export`: a registered adapter in the form a serving stack loads without asking.

    thumbs export production --registry REGISTRY --format peft   --out serve/thumbs-lora
    thumbs export v0007      --registry REGISTRY --format merged --out serve/thumbs-merged [--dtype bfloat16]

peft:   adapter_config.json, adapter_model.safetensors, serving.json. Loadable by
        `PeftModel.from_pretrained` and by vLLM (`--enable-lora --lora-modules NAME=DIR`, `LoRARequest`, or
        hot-swapped into a running server: deploy/serving.py). An adapter vLLM would refuse is refused here,
        saying why (deploy/vllm_rules.py: targets, rank above --max-lora-rank, modules_to_save, DoRA, bias).
merged: the adapter merged into a bf16/fp16 copy of the base loaded from its original weights (never
        into 4-bit weights, which would round the update away): config.json, generation_config.json,
        model.safetensors (sharded when large), the tokenizer files, serving.json.

serving.json records the base model and its weight hash, the rank, the chat template training used
(a Jinja equivalent of the plain HH template when the tokenizer has none) and ready-to-paste vLLM and
transformers snippets. The folder is written under a temp name and swapped in, so a re-run replaces it whole;
a full disk raises DiskFull naming `--out`, with the temp folder removed and the old export left serving.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from deploy import vllm_rules, vllm_server
from deploy.registry import Registry, RegistryError
from common.faults import as_disk_full, fault_point
from training.model import resolve_model_path, weights_fingerprint
from training.run_folder import read_meta

FORMATS = ("peft", "merged")
DTYPES = ("bfloat16", "float16", "float32")
# The plain template of training/data.py, as a chat template serving engines can apply.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '\\n\\n' }}"
    "{% if message['role'] == 'user' %}Human{% elif message['role'] == 'assistant' %}Assistant"
    "{% else %}{{ message['role'] | capitalize }}{% endif %}: {{ message['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}")
# peft keys that only mean something on a quantised base (LoftQ init, QA-LoRA): dropped when unused, so a
# serving engine never wonders whether the adapter needs a 4-bit base.
QUANTIZED_ONLY = ("loftq_config", "use_qalora", "qalora_group_size")


def export(registry: Registry, ref: str, fmt: str, out: Path, *, dtype: str = "bfloat16",
           base_model: str | None = None, max_lora_rank: int | None = None, for_vllm: bool = False,
           log: Callable[[str], None] = print) -> dict:
    """Write `ref` ('production', 'previous' or a version) of `registry` to `out` as `fmt`; return serving.json.

    A peft export is refused when vLLM would refuse the adapter (deploy/vllm_rules.py), ranks above
    `max_lora_rank` (the server's --max-lora-rank; default vLLM's largest) included. `for_vllm` (the export
    feeds a vLLM server) also refuses bases vLLM serves without LoRA, which otherwise only get a note."""
    if max_lora_rank is not None:
        vllm_rules.check_max_lora_rank(max_lora_rank)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    version = registry.resolve(ref)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    with tempfile.TemporaryDirectory(prefix=".thumbs-export-") as scratch, \
            registry.checkout(version, Path(scratch)) as source:
        meta = read_meta(source)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            architecture = _architecture(meta, base_model)
            config = _vllm_config(json.loads((source / "adapter_config.json").read_text()), meta, source,
                                  architecture, max_lora_rank, for_vllm and fmt == "peft")
            if fmt == "peft":
                (staging / "adapter_config.json").write_text(json.dumps(config, indent=2))
                shutil.copyfile(source / "adapter_model.safetensors", staging / "adapter_model.safetensors")
            else:
                _merge(source, meta, staging, dtype, base_model, log)
            serving = _serving(registry, version, fmt, dtype, config, meta, source, out, architecture, max_lora_rank)
            fault_point("export.mid_copy")  # the weights copied, serving.json not yet: all of it is in staging
            (staging / "serving.json").write_text(json.dumps(serving, indent=2))
            _swap_in(staging, out)
        except BaseException as err:
            shutil.rmtree(staging, ignore_errors=True)
            full = as_disk_full(out, err)
            if full is not None:
                raise full from err
            raise
    if fmt == "peft" and serving["vllm"].get("note"):
        log(f"export: note: {serving['vllm']['note']}")
    log(f"export: {registry.name} {version} ({ref}) as {fmt} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return serving


def _vllm_config(config: dict, meta: dict, source: Path, architecture: str | None, max_lora_rank: int | None,
                 for_vllm: bool) -> dict:
    """peft's adapter_config.json, checked against what vLLM refuses, pointing at the base by name."""
    if config.get("loftq_config"):
        raise RegistryError("the adapter was initialised with LoftQ for a quantised base; export it merged instead")
    found = vllm_rules.problems(config, _lora_modules(source), architecture,
                                max_lora_rank or vllm_rules.MAX_LORA_RANKS[-1])
    if for_vllm and vllm_rules.lora_supported(architecture) is False:
        found.append(vllm_rules.no_lora_reason(architecture))
    if found:
        raise RegistryError(f"vLLM cannot serve this adapter ({architecture or 'architecture unknown'}): "
                            + "; ".join(found))
    # Training ran on a local path; serving knows the base by its id.
    kept = {k: v for k, v in config.items() if k not in QUANTIZED_ONLY}
    return dict(kept, base_model_name_or_path=meta["base_model"], inference_mode=True)


def _lora_modules(source: Path) -> set:
    """The modules the adapter's weights are for, read from the safetensors header as vLLM does."""
    from safetensors import safe_open

    with safe_open(source / "adapter_model.safetensors", framework="pt") as f:
        return vllm_rules.adapter_modules(f.keys())


def _architecture(meta: dict, base_model: str | None) -> str | None:
    """config.json's architecture of the base, wherever it can be found here; None if nowhere."""
    for candidate in (base_model, meta.get("base_model_path"), meta["base_model"]):
        try:
            config = resolve_model_path(candidate) / "config.json" if candidate else None
        except FileNotFoundError:
            continue
        if config is not None and config.is_file():
            return (json.loads(config.read_text()).get("architectures") or [None])[0]
    return None


def _merge(source: Path, meta: dict, staging: Path, dtype: str, base_model, log) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model_path(base_model or meta.get("base_model_path") or meta["base_model"])
    if weights_fingerprint(model_dir) != meta["base_model_sha256"]:
        raise RegistryError(f"{model_dir} is not the base this adapter was trained on (weight hash differs); "
                            "pass --base-model with the right one")
    log(f"export: merging into a {dtype} copy of {model_dir}")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(source)).merge_and_unload()
    merged.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(staging)


def _serving(registry: Registry, version: str, fmt: str, dtype: str, config: dict, meta: dict, source: Path,
             out: Path, architecture: str | None, max_lora_rank: int | None) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    template = tokenizer.chat_template if getattr(tokenizer, "chat_template", None) else PLAIN_CHAT_TEMPLATE
    rank = int(config["r"])
    max_rank = max_lora_rank or vllm_rules.next_rank(rank)
    evaluation = (registry.read_json(version, "eval.json") or {}).get("candidate") or {}
    base, path = meta["base_model"], str(out.resolve())
    serving = {
        "format": fmt, "registry": registry.url, "name": registry.name, "version": version,
        "base_model": base, "base_model_sha256": meta["base_model_sha256"], "snapshot_id": meta.get("snapshot_id"),
        "architecture": architecture, "trained_on_quantization": meta["config"]["quantize"],
        "lora_rank": rank, "lora_alpha": config.get("lora_alpha"), "max_lora_rank": max_rank,
        "target_modules": config.get("target_modules"),
        "chat_template_source": "tokenizer" if template is not PLAIN_CHAT_TEMPLATE else "thumbs plain HH template",
        "chat_template": template,
        "eval": {"auc": (evaluation.get("preference") or {}).get("auc"),
                 "kl_per_token": (evaluation.get("drift") or {}).get("kl_per_token")},
    }
    template_flag = " --chat-template <chat_template from serving.json>" if template is PLAIN_CHAT_TEMPLATE else ""
    if fmt == "peft":
        serving["adapter_path"] = path
        serving["vllm"] = _vllm_peft(base, path, max_rank, architecture, template_flag)
        serving["transformers"] = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                                   f"from peft import PeftModel\n"
                                   f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), "
                                   f"{path!r})\ntokenizer = AutoTokenizer.from_pretrained({base!r})")
    else:
        serving["model_path"] = path
        serving["dtype"] = dtype
        serving["vllm"] = {"cli": f"python -m {vllm_server.ENTRYPOINT} --model {path} --dtype {dtype}{template_flag}",
                           "python": f"from vllm import LLM\nllm = LLM(model={path!r}, dtype={dtype!r})"}
        serving["transformers"] = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                                   f"model = AutoModelForCausalLM.from_pretrained({path!r}, dtype={dtype!r})\n"
                                   f"tokenizer = AutoTokenizer.from_pretrained({path!r})")
    return serving


def _vllm_peft(base: str, path: str, max_rank: int, architecture: str | None, template_flag: str) -> dict:
    """How vLLM serves the adapter: statically (`cli`), hot-swapped into a running server (`server` + `load`,
    what `thumbs export --notify` does), or in-process (`python`)."""
    block = {
        "version": vllm_rules.VLLM_VERSION, "lora_supported": vllm_rules.lora_supported(architecture),
        "cli": f"python -m {vllm_server.ENTRYPOINT} --model {base} {' '.join(vllm_server.lora_flags(max_rank))} "
               f"--lora-modules thumbs={path}{template_flag}",
        "server": f"{vllm_server.RUNTIME_UPDATING}=True python -m {vllm_server.ENTRYPOINT} --model {base} "
                  f"{' '.join(vllm_server.lora_flags(max_rank))}{template_flag}",
        "load": {"POST /v1/load_lora_adapter": {"lora_name": "thumbs", "lora_path": path, "load_inplace": True}},
        "python": (f"from vllm import LLM\nfrom vllm.lora.request import LoRARequest\n"
                   f"llm = LLM(model={base!r}, enable_lora=True, max_lora_rank={max_rank})\n"
                   f"out = llm.chat(messages, lora_request=LoRARequest('thumbs', 1, {path!r}))")}
    if block["lora_supported"] is False:
        block["note"] = vllm_rules.no_lora_reason(architecture)
    elif block["lora_supported"] is None:
        block["note"] = (f"target modules not checked: {architecture or 'the base architecture (base not found here)'} "
                         "is not in thumbs' table of vLLM LoRA support (deploy/vllm_rules.py)")
    return block


def _swap_in(staging: Path, out: Path) -> None:
    """Replace `out` with `staging`: the old folder (if any) is moved aside, then removed."""
    if out.exists() and not out.is_dir():
        raise RegistryError(f"--out {out} exists and is not a folder")
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def serving_record(out: Path) -> dict:
    """The serving.json of an export folder, {} when there is none (nothing exported yet)."""
    path = Path(out) / "serving.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def holds(record: dict, registry: Registry, version: str, fmt: str) -> bool:
    """Whether an export folder's serving.json says it holds `version` of this registry's model in `fmt`."""
    return (record.get("version"), record.get("format"), record.get("registry"), record.get("name")) == \
        (version, fmt, registry.url, registry.name)
