"""Training trusts nothing it reads back (issue 26): checkpoints, the reference cache, the base-model folder and
the run folder. Each class of fault is one test over several cases, through `thumbs train` / `thumbs inspect`
(the CLI functions, in process) or the public `train`, `read_meta` and `read_metrics`.

    pytest tests/test_training_guards.py

A "crashed" run is a real one stopped by an exception raised from a torch optimizer hook before its 6th
update (checkpoints at steps 2 and 4 on disk, as after a kill), so nothing in thumbs is replaced.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
import typer
from safetensors.torch import load_file
from click.testing import Result
from typer.testing import CliRunner

from training import checkpoint
from training.cli import inspect_command, train_command
from training.config import TrainConfig
from training.refcache import cache_dir
from training.run_folder import RunFolderError, read_meta, read_metrics
from training.trainer import train

pytestmark = pytest.mark.slow  # each case trains a few steps on CPU: seconds, ~1 min in all

YAML = ("max_steps: 6\ncheckpoint_every: 2\nkeep_checkpoints: 3\nmicro_batch_size: 4\nmax_length: 128\n"
        "max_prompt_length: 96\nquantize: none\nlearning_rate: 1.0e-3\n")


def config() -> TrainConfig:
    return TrainConfig(max_steps=6, checkpoint_every=2, keep_checkpoints=3, micro_batch_size=4, max_length=128,
                       max_prompt_length=96, quantize="none", learning_rate=1e-3)


def cli(*args) -> Result:
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("inspect")(inspect_command)
    return CliRunner().invoke(app, [str(a) for a in args])


def adapter(out: Path) -> dict:
    return load_file(str(out / "adapter_model.safetensors"))


def same_adapter(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


class Crash(Exception):
    """Stands for a kill: raised before the optimizer's update, so the step's state is never written."""


def train_until_crash(snapshot: Path, model: Path, out: Path, before_update: int) -> None:
    calls = itertools.count(1)

    def hook(optimizer, args, kwargs):
        if next(calls) == before_update:
            raise Crash

    handle = register_optimizer_step_pre_hook(hook)
    try:
        with pytest.raises(Crash):
            train(snapshot, str(model), out, config(), log=lambda s: None)
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def runs(hh_snapshot, tiny_model, tmp_path_factory) -> dict:
    """A private snapshot (its own reference cache), a straight run, and a run crashed before step 6's update."""
    root = tmp_path_factory.mktemp("guards")
    snapshot = Path(shutil.copytree(hh_snapshot, root / "snapshot"))
    train(snapshot, str(tiny_model), root / "straight", config(), log=lambda s: None)
    train_until_crash(snapshot, tiny_model, root / "crashed", before_update=6)
    assert [p.name for p in checkpoint.saved(root / "crashed")] == ["step-0000004", "step-0000002"]
    return {"snapshot": snapshot, "straight": root / "straight", "crashed": root / "crashed"}


def crashed_copy(runs: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs["crashed"], tmp_path / "run"))


def cached_snapshot(runs: dict, tmp_path: Path) -> tuple:
    """A copy of the snapshot with a copy of its clean reference cache: (snapshot, the cached values' path)."""
    snapshot = Path(shutil.copytree(runs["snapshot"], tmp_path / "snapshot"))
    shutil.copytree(cache_dir(runs["snapshot"]), cache_dir(snapshot))
    [values] = cache_dir(snapshot).glob("*.npy")
    return snapshot, values


# --- damage, as a disk, a kill or a person leaves it ----------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **fields)))


def reseal(folder: Path) -> None:
    """Forge a checkpoint's proof to match its files, as someone who planted a file could."""
    state = json.loads((folder / checkpoint.STATE).read_text())
    state.pop("sha256")
    for name in state["files"]:
        data = (folder / name).read_bytes()
        state["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    (folder / checkpoint.STATE).write_text(json.dumps(dict(state, sha256=digest)))


class Planted:
    """Unpickling this creates `marker`: a stand-in for any code a planted file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def payload(tmp_path) -> tuple:
    """(pickle bytes whose loading would create the marker, the marker); proven live on another marker first."""
    probe = tmp_path / "probe-ran"
    torch.save({"optimizer": Planted(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)  # what `--resume` did before
    assert probe.exists()
    marker = tmp_path / "planted-code-ran"
    return pickle.dumps({"optimizer": Planted(marker)}), marker


# --- 1. nothing thumbs reads back is unpickled ---------------------------------------------------------

def test_an_old_style_optimizer_pt_planted_in_every_checkpoint_is_refused_and_never_run(runs, payload, tmp_path):
    data, marker = payload
    out = crashed_copy(runs, tmp_path)
    for folder in checkpoint.saved(out):  # the pickle layout thumbs wrote before, with a valid-looking state
        state = json.loads((folder / checkpoint.STATE).read_text())
        for name in checkpoint.FILES:
            (folder / name).unlink()
        (folder / "optimizer.pt").write_bytes(data)
        (folder / checkpoint.STATE).write_text(json.dumps({k: v for k, v in state.items()
                                                            if k not in ("files", "sha256")}))
    result = cli("train", "--snapshot", runs["snapshot"], "--base-model", _base(runs), "--config", _yaml(tmp_path),
                 "--out", out, "--resume")
    assert result.exit_code == 2 and not marker.exists()
    assert "carries no proof" in result.output and f"rm -r {out / 'checkpoints'}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("planted", list(checkpoint.FILES))
def test_a_pickle_planted_with_a_forged_proof_is_refused_and_resume_falls_back(runs, payload, planted, tmp_path):
    data, marker = payload
    out = crashed_copy(runs, tmp_path)
    newest = checkpoint.latest(out)
    (newest / planted).write_bytes(data)
    reseal(newest)
    lines = []
    train(runs["snapshot"], _base(runs), out, config(), resume=True, log=lines.append)
    assert not marker.exists()
    assert any(line.startswith(f"warning: checkpoint {newest}") for line in lines), lines
    assert any(f"resuming from {out / 'checkpoints' / 'step-0000002'}" in line for line in lines), lines
    assert same_adapter(adapter(out), adapter(runs["straight"]))


def test_a_pickled_reference_cache_with_a_forged_proof_is_recomputed_and_never_run(runs, payload, tmp_path):
    data, marker = payload
    snapshot, values = cached_snapshot(runs, tmp_path)
    np.save(values, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    _forge_cache_proof(values)
    lines = []
    train(snapshot, _base(runs), tmp_path / "second", config(), log=lines.append)
    assert not marker.exists() and _notice(lines)
    assert same_adapter(adapter(tmp_path / "second"), adapter(runs["straight"]))


# --- 2. resume falls back to the newest checkpoint that loads ------------------------------------------

NEWEST_DAMAGE = {
    "adapter truncated": lambda ck: truncate(ck / "adapter.safetensors"),
    "optimizer tensors bit-flipped": lambda ck: flip_bit(ck / "optimizer.safetensors"),
    "optimizer.json missing": lambda ck: (ck / "optimizer.json").unlink(),
    "trainer_state.json missing": lambda ck: (ck / "trainer_state.json").unlink(),
    "trainer_state.json torn": lambda ck: truncate(ck / "trainer_state.json"),
    "trainer_state.json step edited": lambda ck: edit_json(ck / "trainer_state.json", step=5),
    "trainer_state.json bit-flipped": lambda ck: flip_bit(ck / "trainer_state.json"),
}


@pytest.mark.parametrize("damage", list(NEWEST_DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_where_a_straight_run_does(runs, damage, tmp_path):
    out = crashed_copy(runs, tmp_path)
    newest = checkpoint.latest(out)
    NEWEST_DAMAGE[damage](newest)
    lines = []
    summary = train(runs["snapshot"], _base(runs), out, config(), resume=True, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and f"checkpoint {newest}" in warnings[0], lines
    assert summary["resumed_from_step"] == 2
    assert [row["step"] for row in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert same_adapter(adapter(out), adapter(runs["straight"]))


def test_a_metrics_line_torn_by_the_kill_does_not_block_the_resume(runs, tmp_path):
    out = crashed_copy(runs, tmp_path)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"loss": 0.5, "st')  # the kill came mid-append
    lines = []
    assert train(runs["snapshot"], _base(runs), out, config(), resume=True, log=lines.append)["resumed_from_step"] == 4
    assert [line for line in lines if line.startswith("warning:")] == [
        f"warning: {out / 'metrics.jsonl'}: 1 damaged line(s) dropped"]
    assert [row["step"] for row in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert same_adapter(adapter(out), adapter(runs["straight"]))


@pytest.mark.parametrize("damage", ["truncated", "missing state", "bit-flipped"])
def test_when_no_checkpoint_loads_one_error_names_the_folder_and_the_way_out(runs, damage, tmp_path):
    out = crashed_copy(runs, tmp_path)
    for folder in checkpoint.saved(out):
        {"truncated": lambda: truncate(folder / "adapter.safetensors"),
         "missing state": lambda: (folder / checkpoint.STATE).unlink(),
         "bit-flipped": lambda: flip_bit(folder / "optimizer.safetensors")}[damage]()
    result = cli("train", "--snapshot", runs["snapshot"], "--base-model", _base(runs), "--config", _yaml(tmp_path),
                 "--out", out, "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"rm -r {out / 'checkpoints'}" in errors[0] and "without --resume" in errors[0]
    assert all(f"checkpoint {folder}" in result.output for folder in checkpoint.saved(out))  # each one named
    assert not (out / "thumbs_meta.json").exists() and len(checkpoint.saved(out)) == 2  # nothing deleted


# --- 3. the reference cache is disposable ----------------------------------------------------------------

def edit_values(values: Path) -> None:
    np.save(values, np.load(values) + 50)  # same shape, other numbers, the old proof kept


CACHE_DAMAGE = {
    "values edited": edit_values,
    "values truncated": truncate,
    "values bit-flipped": flip_bit,
    "values missing": lambda values: values.unlink(),
    "proof missing": lambda values: values.with_suffix(".json").unlink(),
    "proof torn": lambda values: truncate(values.with_suffix(".json")),
}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_doubtful_reference_cache_is_recomputed_and_trains_the_clean_adapter(runs, damage, tmp_path):
    snapshot, values = cached_snapshot(runs, tmp_path)
    CACHE_DAMAGE[damage](values)
    lines = []
    train(snapshot, _base(runs), tmp_path / "second", config(), log=lines.append)
    assert _notice(lines) and json.loads((tmp_path / "second" / "thumbs_meta.json").read_text())[
        "reference_cache"]["hit"] is False
    assert same_adapter(adapter(tmp_path / "second"), adapter(runs["straight"]))
    proof = json.loads(values.with_suffix(".json").read_text())  # written again, whole
    assert proof["sha256"] == hashlib.sha256(values.read_bytes()).hexdigest()


def test_the_cache_values_do_matter_so_the_test_above_can_fail(runs, tmp_path):
    snapshot, values = cached_snapshot(runs, tmp_path)
    edit_values(values)
    _forge_cache_proof(values)  # a proof that holds is trusted
    train(snapshot, _base(runs), tmp_path / "second", config(), log=lambda s: None)
    assert not same_adapter(adapter(tmp_path / "second"), adapter(runs["straight"]))


# --- 4. a damaged base-model folder is named, not blamed on the data --------------------------------------

BASE_DAMAGE = {  # name: (damage, the file the error names, whether `thumbs inspect` (tokenizer only) refuses too)
    "tokenizer.json missing": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json", True),
    "tokenizer.json truncated": (lambda d: truncate(d / "tokenizer.json"), "tokenizer.json", True),
    "tokenizer.json emptied": (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer", True),
    "config.json missing": (lambda d: (d / "config.json").unlink(), "config.json", False),
    "config.json torn": (lambda d: truncate(d / "config.json"), "config.json", True),
    "weights truncated": (lambda d: truncate(d / "model.safetensors"), "model.safetensors", False),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), "no weight files", False),
}


@pytest.mark.parametrize("damage", list(BASE_DAMAGE))
def test_a_damaged_base_model_folder_gets_one_error_naming_the_folder_and_the_file(runs, tiny_model, damage,
                                                                                  tmp_path):
    spoil, named, inspect_refuses = BASE_DAMAGE[damage]
    base = Path(shutil.copytree(tiny_model, tmp_path / "base"))
    spoil(base)
    trained = cli("train", "--snapshot", runs["snapshot"], "--base-model", base, "--config", _yaml(tmp_path),
                  "--out", tmp_path / "out")
    inspected = cli("inspect", "--snapshot", runs["snapshot"], "--base-model", base, "--n", "1")
    for result, refused in ((trained, True), (inspected, inspect_refuses)):
        if not refused:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert f"base model folder {base}" in error and named in error and "hf download" in error, error
        assert "unsplittable" not in error and "tokenized" not in error  # not blamed on the data
    assert not (tmp_path / "out" / "thumbs_meta.json").exists()


def test_evaluate_names_a_damaged_base_model_folder_too(runs, tiny_model, tmp_path):
    from evaluation.evaluate import EvaluationError, evaluate

    base = Path(shutil.copytree(tiny_model, tmp_path / "base"))
    truncate(base / "model.safetensors")
    with pytest.raises(EvaluationError, match=f"base model folder {base}: model.safetensors is truncated"):
        evaluate(runs["straight"], runs["snapshot"], base_model=str(base), log=lambda s: None)


# --- 5. a finished run folder is read back only as written ------------------------------------------------

FOLDER_DAMAGE = {  # name: (damage, the file the error names)
    "thumbs_meta.json torn": (lambda out: truncate(out / "thumbs_meta.json"), "thumbs_meta.json"),
    "thumbs_meta.json edited": (lambda out: edit_json(out / "thumbs_meta.json", base_model_sha256="0" * 64),
                                "thumbs_meta.json"),
    "thumbs_meta.json not a record": (lambda out: (out / "thumbs_meta.json").write_text("[]"), "thumbs_meta.json"),
    "adapter bit-flipped": (lambda out: flip_bit(out / "adapter_model.safetensors"), "adapter_model.safetensors"),
    "adapter config edited": (lambda out: edit_json(out / "adapter_config.json", r=64), "adapter_config.json"),
    "tokenizer missing": (lambda out: (out / "tokenizer.json").unlink(), "tokenizer.json"),
    "metrics edited": (lambda out: (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0}\n'), "metrics.jsonl"),
}


@pytest.mark.parametrize("damage", list(FOLDER_DAMAGE))
def test_a_damaged_run_folder_is_refused_naming_the_file(runs, damage, tmp_path):
    spoil, named = FOLDER_DAMAGE[damage]
    out = Path(shutil.copytree(runs["straight"], tmp_path / "run"))
    read_meta(out), read_metrics(out)  # whole, it reads
    spoil(out)
    with pytest.raises(RunFolderError, match=f"{out}/{named}.*train again into a new folder"):
        read_meta(out)
    with pytest.raises(RunFolderError, match=f"{out}/{named}"):
        read_metrics(out)


@pytest.mark.parametrize("line", ['{"step": 1, "lo', "not json", '{"loss": 0.5}', "[1, 2]"])
def test_a_torn_or_foreign_metrics_line_is_named_with_its_number(runs, line, tmp_path):
    out = Path(shutil.copytree(runs["crashed"], tmp_path / "run"))  # unfinished: no proof to check yet
    with (out / "metrics.jsonl").open("a") as f:
        f.write(line + "\n")
    with pytest.raises(RunFolderError, match="metrics.jsonl is damaged: line 6 "):
        read_metrics(out)


def test_a_run_folder_written_before_the_proof_still_reads(runs, tmp_path):
    out = Path(shutil.copytree(runs["straight"], tmp_path / "run"))
    meta = json.loads((out / "thumbs_meta.json").read_text())
    legacy = {k: v for k, v in meta.items() if k not in ("files", "sha256")}
    (out / "thumbs_meta.json").write_text(json.dumps(legacy))
    assert read_meta(out) == legacy and len(read_metrics(out)) == 6


# --- helpers ------------------------------------------------------------------------------------------------

def _base(runs: dict) -> str:
    return json.loads((runs["straight"] / "thumbs_meta.json").read_text())["base_model"]


def _yaml(tmp_path: Path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    return path


def _notice(lines: list) -> bool:
    return sum("reference log-probs: not using the cache" in line and "recomputing" in line for line in lines) == 1


def _forge_cache_proof(values: Path) -> None:
    data = values.read_bytes()
    proof = json.loads(values.with_suffix(".json").read_text())
    values.with_suffix(".json").write_text(json.dumps(dict(proof, bytes=len(data),
                                                           sha256=hashlib.sha256(data).hexdigest())))
