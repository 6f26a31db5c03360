"""Evaluate → promote / reject → rollback → export, end to end through the `thumbs` CLI, on a tiny random GPT-2.

The feedback (conftest `style_snapshot`) has a learnable taste: polite answers up, curt answers down,
on real HH-RLHF questions, with 20% of the prompts held out. An adapter trained on it must rank the
held-out thumbs-up above the thumbs-down; the untrained adapter is a trained run whose LoRA B matrices are set back
to their initial zeros (the adapter is then exactly the base: a learning rate of 0, which would do the same, is
refused by the config).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deploy.promote import promote
from deploy.registry import Registry, RegistryError
from evaluation.evaluate import EvalConfig, EvaluationError, evaluate
from evaluation.promotion import PromotionPolicy
from canary_helpers import canary_votes
from flows.cli import app
from training.config import TrainConfig
from training.data import render
from training.trainer import train

pytestmark = pytest.mark.slow

EVAL_FLAGS = ["--generation-prompts", "4", "--max-new-tokens", "12"]
PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors", "serving.json"}
MERGED_FILES = {"config.json", "generation_config.json", "model.safetensors", "serving.json", "tokenizer.json",
                "tokenizer_config.json"}


def thumbs(*args: str, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def quick(**fields) -> TrainConfig:
    base = dict(max_steps=24, micro_batch_size=8, max_length=128, max_prompt_length=96, checkpoint_every=0,
                learning_rate=5e-3, quantize="nf4")
    return TrainConfig(**{**base, **fields})


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, style_snapshot, tiny_model) -> dict:
    root = tmp_path_factory.mktemp("adapters")
    runs = {"trained": quick(), "untrained": quick(max_steps=2), "trained2": quick(seed=7)}
    for name, config in runs.items():
        train(style_snapshot, str(tiny_model), root / name, config, log=lambda s: None)
    untrain(root / "untrained")
    return {name: root / name for name in runs}


def untrain(run: Path) -> None:
    """LoRA's B matrices back to zero, as peft initialises them, and the run folder sealed again."""
    from safetensors.torch import load_file, save_file

    from training.run_folder import read_meta, write_meta

    meta = read_meta(run)
    weights = load_file(run / "adapter_model.safetensors")
    assert any("lora_B" in name for name in weights)
    save_file({name: torch.zeros_like(w) if "lora_B" in name else w for name, w in weights.items()},
              run / "adapter_model.safetensors")
    write_meta(run, {k: v for k, v in meta.items() if k not in ("files", "sha256")}, list(meta["files"]))


def fresh_copy(adapter: Path, tmp_path: Path) -> Path:
    """A private copy, so a test's eval.json never leaks into another test."""
    import shutil

    return Path(shutil.copytree(adapter, tmp_path / adapter.name))


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_trained_adapter_ranks_held_out_feedback_better_than_an_untrained_one(adapters, style_snapshot, tmp_path):
    config = EvalConfig(generation_prompts=4, max_new_tokens=12, resamples=200, suites=["evaluation/suites/example.jsonl"])
    trained = evaluate(fresh_copy(adapters["trained"], tmp_path), style_snapshot, config=config, log=lambda s: None)
    untrained = evaluate(fresh_copy(adapters["untrained"], tmp_path), style_snapshot, config=config, log=lambda s: None)
    t, u = trained["candidate"], untrained["candidate"]
    assert u["preference"]["auc"] == 0.5 and u["drift"]["kl_per_token"] == pytest.approx(0, abs=1e-6)
    assert t["preference"]["auc"] > 0.9 and t["preference"]["auc_ci95"][0] > 0.5
    assert t["preference"]["reward_desirable"] > 0 > t["preference"]["reward_undesirable"]
    assert t["drift"]["kl_per_token"] > 0 and t["drift"]["length"]["greedy"] > 0
    assert trained["eval_examples"]["examples"] > 20 and trained["incumbent"] is None
    assert set(t["suites"]["example"]) == {"accuracy", "passed", "cases", "failed"}
    written = {p.name for p in (tmp_path / "trained").iterdir()}
    assert {"eval.json", "report.md", "rewards.png", "training.png", "balance.png"} <= written
    report = (tmp_path / "trained" / "report.md").read_text()
    assert "preference AUC" in report and "![Implied rewards by class](rewards.png)" in report


def test_promote_reject_rollback_and_list_through_the_cli(adapters, style_snapshot, tmp_path):
    registry = tmp_path / "registry"
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_auc: 0.6\nmax_auc_drop: 0.5\n")
    untrained, trained, trained2 = (fresh_copy(adapters[n], tmp_path) for n in ("untrained", "trained", "trained2"))

    def evaluate_and_promote(adapter: Path):
        thumbs("evaluate", "--adapter", adapter, "--snapshot", style_snapshot, "--registry", registry, *EVAL_FLAGS)
        done = thumbs("promote", "--adapter", adapter, "--registry", registry, "--policy", policy, "--json", ok=False)
        record = json.loads(done.stdout)
        assert done.exit_code == (0 if record["promote"] else 3), done.output  # 3: rejected, documented
        return record

    first = evaluate_and_promote(untrained)
    assert first["version"] == "v0001" and first["promote"] is False
    assert first["reasons"] == [f"preference AUC 0.500 < floor 0.6"]
    assert Registry(registry).aliases()["production"] is None  # rejected, yet registered

    assert evaluate_and_promote(trained)["promote"] is True  # no incumbent: floors alone
    third = evaluate_and_promote(trained2)  # compared with v0002 on the same eval split
    assert third["promote"] is True and third["incumbent"] == "v0002"
    assert json.loads((trained2 / "eval.json").read_text())["incumbent"]["version"] == "v0002"

    again = json.loads(thumbs("promote", "--adapter", trained2, "--registry", registry, "--json").stdout)
    assert again["already_registered"] and Registry(registry).versions() == ["v0001", "v0002", "v0003"]

    listing = {r["version"]: r["status"] for r in json.loads(thumbs("registry", "list", "--registry", registry,
                                                                      "--json").stdout)}
    assert listing == {"v0001": "rejected", "v0002": "previous", "v0003": "production"}
    assert "*production" in thumbs("registry", "list", "--registry", registry).stdout

    thumbs("rollback", "--registry", registry)
    aliases = Registry(registry).aliases()
    assert (aliases["production"], aliases["previous"]) == ("v0002", None)
    listing = {r["version"]: r["status"] for r in Registry(registry).listing()}
    assert listing == {"v0001": "rejected", "v0002": "production", "v0003": "rolled back"}
    refused = thumbs("rollback", "--registry", registry, ok=False)
    assert refused.exit_code == 2 and "no previous production version" in refused.output


def nudge(run: Path) -> None:
    """Another adapter as good as `run` (LoRA's B matrices x 0.99, the run folder sealed again)."""
    from safetensors.torch import load_file, save_file

    from training.run_folder import read_meta, write_meta

    meta = read_meta(run)
    weights = load_file(run / "adapter_model.safetensors")
    save_file({name: w * 0.99 if "lora_B" in name else w for name, w in weights.items()},
              run / "adapter_model.safetensors")
    write_meta(run, {k: v for k, v in meta.items() if k not in ("files", "sha256")}, list(meta["files"]))


def test_a_canary_release_through_the_cli(adapters, style_snapshot, tmp_path):
    """rollout: canary. The first candidate becomes production (nothing to compare with), the next the canary for
    half the users; one users like less is rolled back by `thumbs canary settle` and production never moves; one
    they like as much is promoted; every decision and its sentence is in aliases.json and the listing."""
    from ingest.intake.job import IngestConfig, ingest

    registry, lake = tmp_path / "registry", tmp_path / "lake"
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_auc: 0.6\nmax_auc_drop: 0.5\nrollout: canary\n"
                      "canary: {share: 0.5, min_votes: 100, margin: 0.1}\n")
    trained, trained2, nudged, untrained = (fresh_copy(adapters[n], tmp_path / f"{i}")
                                            for i, n in enumerate(("trained", "trained2", "trained", "untrained")))
    nudge(nudged)

    def evaluate_and_promote(adapter: Path, *flags: str) -> dict:
        thumbs("evaluate", "--adapter", adapter, "--snapshot", style_snapshot, "--registry", registry, *EVAL_FLAGS)
        return json.loads(thumbs("promote", "--adapter", adapter, "--registry", registry, "--policy", policy,
                                 "--json", *flags).stdout)

    def settle(feedback: Path, arms: dict, users: int = 400) -> dict:
        canary_votes(feedback, Registry(registry), arms, users)
        ingest([feedback], lake, IngestConfig(format="events", insecure_dev_key=True), progress=False)
        return json.loads(thumbs("canary", "settle", "--registry", registry, "--lake", lake, "--policy", policy,
                                 "--json").stdout)

    assert evaluate_and_promote(trained)["rollout"] == "direct"  # no production yet: straight there
    second = evaluate_and_promote(trained2)
    aliases = Registry(registry).aliases()
    assert second["rollout"] == "canary" and aliases["production"] == "v0001"
    assert aliases["canary"]["version"] == "v0002" and aliases["canary"]["share"] == 0.5

    look = settle(tmp_path / "day1.jsonl", {"production": 0.6, "canary": 0.2})  # users like v0002 far less
    assert look["outcome"] == "rollback" and look["version"] == "v0002", look["sentence"]
    assert sum(look["canary"].values()) + sum(look["production"].values()) == 400 and look["difference"] < -0.25
    aliases = Registry(registry).aliases()
    assert aliases["canary"] is None and (aliases["production"], aliases["previous"]) == ("v0001", None)
    assert aliases["events"][-1]["action"] == "canary-rollback"
    rows = {r["version"]: r for r in Registry(registry).listing()}
    assert rows["v0002"]["status"] == "canary rolled back" and "users like the canary less" in rows["v0002"]["canary"]
    assert "v0002: canary: users like the canary less" in thumbs("registry", "list", "--registry", registry).stdout

    assert evaluate_and_promote(nudged)["rollout"] == "canary"  # the next candidate: v0003, the canary
    look = settle(tmp_path / "day2.jsonl", {"production": 0.5, "canary": 0.5})  # liked as much; day 1 not counted
    assert look["outcome"] == "continue" and look["low"] < -0.1 < look["high"], look["sentence"]  # too few votes
    assert sum(look["canary"].values()) + sum(look["production"].values()) == 400
    running = Registry(registry).aliases()["canary"]
    assert running["version"] == "v0003" and running["last"]["sentence"].startswith("not yet decided")
    assert {r["version"]: r["status"] for r in Registry(registry).listing()}["v0003"].startswith("canary (50% of")
    look = settle(tmp_path / "day3.jsonl", {"production": 0.5, "canary": 0.5}, users=1600)  # a busier night
    assert look["outcome"] == "promote" and look["version"] == "v0003", look["sentence"]
    assert sum(look["canary"].values()) + sum(look["production"].values()) == 2000 and look["low"] > -0.1
    aliases = Registry(registry).aliases()
    assert (aliases["production"], aliases["previous"], aliases["canary"]) == ("v0003", "v0001", None)

    forced = evaluate_and_promote(untrained, "--force")  # --force means production now, never a canary
    assert forced["rollout"] == "direct" and Registry(registry).aliases()["production"] == "v0004"
    none = thumbs("canary", "settle", "--registry", registry, "--lake", lake, "--policy", policy, "--json")
    assert json.loads(none.stdout) is None and "no canary running" in none.output
    stopped = thumbs("canary", "stop", "--registry", registry, ok=False)
    assert stopped.exit_code == 2 and "no canary running" in stopped.output


@pytest.fixture(scope="module")
def registry(adapters, style_snapshot, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    adapter = fresh_copy(adapters["trained"], root)
    evaluate(adapter, style_snapshot, config=EvalConfig(generation_prompts=2, max_new_tokens=8, resamples=50),
             log=lambda s: None)
    promote(adapter, Registry(root / "reg"), PromotionPolicy(), log=lambda s: None)
    return root / "reg"


def test_peft_export_loads_with_peft_and_is_what_vllm_accepts(registry, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "serve" / "lora"
    thumbs("export", "production", "--registry", registry, "--format", "peft", "--out", out)
    thumbs("export", "production", "--registry", registry, "--format", "peft", "--out", out)  # a re-run replaces it
    assert {p.name for p in out.iterdir()} == PEFT_FILES
    # no staging left behind; the export the re-run replaced is kept beside it, whole (rollback-friendly)
    assert sorted(p.name for p in out.parent.iterdir()) == [".lora.previous", "lora"]
    assert {p.name for p in (out.parent / ".lora.previous").iterdir()} == PEFT_FILES

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    assert config["bias"] == "none" and not config["use_dora"] and not config["modules_to_save"]
    assert not {"loftq_config", "use_qalora", "qalora_group_size"} & set(config)
    serving = json.loads((out / "serving.json").read_text())
    assert serving["version"] == "v0001" and serving["max_lora_rank"] == 16
    assert serving["base_model_sha256"] == json.loads((registry / "default/versions/v0001/thumbs_meta.json")
                                                      .read_text())["base_model_sha256"]
    assert f"--lora-modules thumbs={out.resolve()}" in serving["vllm"]["cli"]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    served = tokenizer.apply_chat_template(messages, chat_template=serving["chat_template"], tokenize=False,
                                           add_generation_prompt=True)
    assert served == render(messages, "", tokenizer)[0]  # serving renders prompts exactly as training did

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    ids = tokenizer(served, return_tensors="pt")["input_ids"]
    generated = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] > ids.shape[1]


def test_merged_export_matches_base_plus_adapter(registry, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    thumbs("export", "v0001", "--registry", registry, "--format", "merged", "--dtype", "float32", "--out", out)
    assert {p.name for p in out.iterdir()} == MERGED_FILES
    ids = torch.tensor([[464, 3290, 318, 257, 1332, 11]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                          registry / "default/versions/v0001").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits)
    assert json.loads((out / "serving.json").read_text())["dtype"] == "float32"


def test_bad_inputs_give_one_clear_error_and_change_nothing(adapters, registry, style_snapshot, tiny_model, tmp_path):
    from transformers import AutoConfig, GPT2LMHeadModel

    missing = thumbs("evaluate", "--adapter", tmp_path / "nope", "--snapshot", style_snapshot, ok=False)
    assert missing.exit_code == 2 and "adapter folder" in missing.output and "not found" in missing.output

    other_base = tmp_path / "other-base"
    torch.manual_seed(1)
    GPT2LMHeadModel(AutoConfig.from_pretrained(tiny_model)).save_pretrained(other_base)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (other_base / f).write_bytes((tiny_model / f).read_bytes())
    adapter = fresh_copy(adapters["trained"], tmp_path)
    before = tree(adapter)
    wrong = thumbs("evaluate", "--adapter", adapter, "--snapshot", style_snapshot, "--base-model", other_base, ok=False)
    assert wrong.exit_code == 2 and "other weights" in wrong.output and tree(adapter) == before

    # An adapter trained on another base cannot be judged against production's on one base.
    foreign = tmp_path / "foreign"
    train(style_snapshot, str(other_base), foreign, quick(max_steps=1), log=lambda s: None)
    registry_before = tree(registry)
    refused = thumbs("evaluate", "--adapter", foreign, "--snapshot", style_snapshot, "--registry", registry,
                     *EVAL_FLAGS, ok=False)
    assert refused.exit_code == 2 and "another base model" in refused.output
    assert not (foreign / "eval.json").exists() and tree(registry) == registry_before

    evaluated = fresh_copy(registry / "default" / "versions" / "v0001", tmp_path)  # has its eval.json
    aliases = registry / "default" / "aliases.json"
    good = aliases.read_bytes()
    try:
        aliases.write_text('{"production": "v0001", "history": ["v0001"')  # truncated
        corrupt_before = tree(registry)
        for args in (("rollback",), ("registry", "list"), ("export", "production", "--out", tmp_path / "x"),
                     ("promote", "--adapter", evaluated)):
            result = thumbs(*args, "--registry", registry, ok=False)
            assert result.exit_code == 2 and "aliases.json is corrupt" in result.output, args
            assert result.output.count("error:") == 1
        assert tree(registry) == corrupt_before and not (tmp_path / "x").exists()
    finally:
        aliases.write_bytes(good)


def test_two_writers_cannot_both_take_production_and_a_crash_leaves_it_alone(adapters, style_snapshot, tmp_path):
    config = EvalConfig(generation_prompts=0, resamples=50)
    candidates = [fresh_copy(adapters[n], tmp_path) for n in ("trained", "trained2")]
    for adapter in candidates:
        evaluate(adapter, style_snapshot, config=config, log=lambda s: None)  # both judged against no production
    registry = Registry(tmp_path / "registry")
    registry.fs.makedirs(registry.path("versions", ".tmp-v0001-dead"), exist_ok=True)  # a writer that died mid-copy
    outcomes, start = [], threading.Barrier(2)

    def writer(adapter):
        start.wait()
        try:
            outcomes.append(promote(adapter, Registry(tmp_path / "registry"), PromotionPolicy(), log=lambda s: None))
        except RegistryError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=writer, args=(a,)) for a in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [o for o in outcomes if isinstance(o, dict)]
    lost = [o for o in outcomes if isinstance(o, RegistryError)]
    assert len(won) == 1 and len(lost) == 1 and "production is now v0001" in str(lost[0])
    assert registry.versions() == ["v0001"] and registry.aliases()["production"] == "v0001"
    assert not registry.fs.exists(registry.path("versions", ".tmp-v0001-dead"))


def test_a_promotion_cut_off_before_its_alias_write_is_finished_by_the_retry(adapters, style_snapshot, tmp_path,
                                                                             monkeypatch):
    adapter = fresh_copy(adapters["trained"], tmp_path)
    evaluate(adapter, style_snapshot, config=EvalConfig(generation_prompts=0, resamples=50), log=lambda s: None)
    registry = Registry(tmp_path / "registry")
    real_write = Registry.write_aliases

    def disk_full(self, aliases):
        raise OSError("No space left on device")

    monkeypatch.setattr(Registry, "write_aliases", disk_full)
    with pytest.raises(OSError):
        promote(adapter, registry, PromotionPolicy(), log=lambda s: None)
    assert registry.versions() == ["v0001"] and registry.aliases()["production"] is None  # registered, not live

    monkeypatch.setattr(Registry, "write_aliases", real_write)
    record = promote(adapter, registry, PromotionPolicy(), log=lambda s: None)  # the flow's task retry
    assert record["version"] == "v0001" and record["promote"] and registry.aliases()["production"] == "v0001"
    again = promote(adapter, registry, PromotionPolicy(), log=lambda s: None)
    assert again["already_registered"] and registry.aliases()["history"] == ["v0001"]


def test_a_registry_at_an_fsspec_url(adapters, style_snapshot, tmp_path):
    adapter = fresh_copy(adapters["trained"], tmp_path)
    evaluate(adapter, style_snapshot, config=EvalConfig(generation_prompts=0, resamples=50), log=lambda s: None)
    url = "memory://thumbs-registry-test"
    record = promote(adapter, Registry(url), PromotionPolicy(), log=lambda s: None)
    assert record["version"] == "v0001" and record["promote"]
    assert [r["status"] for r in Registry(url).listing()] == ["production"]
    thumbs("export", "production", "--registry", url, "--out", tmp_path / "lora")
    assert {p.name for p in (tmp_path / "lora").iterdir()} == PEFT_FILES
    with pytest.raises(EvaluationError, match="not a finished"):
        evaluate(tmp_path, style_snapshot, log=lambda s: None)
