"""The deploy stage never deletes what it did not write and never trusts what it reads back (issue 26).

Classes, each with several cases: `thumbs export --out` refuses any folder it did not export (the lake,
the registry, the current or home folder, `/`, a non-export folder), here and in the function the
nightly calls; an export is switched in one step (killed anywhere, a complete export serves), through a
user's symlink, beside concurrent exports, cleaning only staging provably its own and deleting old
exports file by file; folders and files get the umask's mode; serving.json's commands paste as one
argument per path; promote never deletes a damaged version; rollback, export and `registry list` check
a version before use; a missing or torn aliases.json is an error with a repair, not a new registry;
the same on object stores (memory:// and a moto S3 server).
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.export import HOST, ExportError, export, verify_export
from deploy.registry import Registry, RegistryError, with_production
from fault_helpers import kill_at, moto_s3, tree
from flows.cli import app

pytestmark = pytest.mark.slow  # the module's fixture trains and evaluates three tiny adapters (~30 s, once)


def thumbs(*args, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    else:
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
        assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def world(hh_snapshot, tiny_model, tmp_path_factory) -> dict:
    """A registry where v0002 is production and v0001 previous, and a candidate evaluated against v0002."""
    from deploy.promote import evaluate_candidate, promote
    from evaluation.evaluate import EvalConfig
    from evaluation.promotion import PromotionPolicy
    from training.config import TrainConfig
    from training.trainer import train

    root = tmp_path_factory.mktemp("deploy-guards")
    registry = Registry(root / "registry")
    runs = {}
    for seed, name in enumerate(("a", "b", "candidate")):
        train(hh_snapshot, str(tiny_model), root / name, TrainConfig(
            max_steps=1, micro_batch_size=4, max_length=128, max_prompt_length=96, quantize="none",
            checkpoint_every=0, seed=seed), log=lambda s: None)
        evaluate_candidate(root / name, hh_snapshot, registry, config=EvalConfig(generation_prompts=0, resamples=20,
                                                                                 device="cpu"), log=lambda s: None)
        if name != "candidate":
            promote(root / name, registry, PromotionPolicy(), force=True, log=lambda s: None)
        runs[name] = root / name
    assert registry.aliases()["history"] == ["v0001", "v0002"]
    return {"registry": root / "registry", "candidate": runs["candidate"]}


@pytest.fixture
def registry(world, tmp_path) -> Path:
    """A private copy of the world's registry."""
    return Path(shutil.copytree(world["registry"], tmp_path / "registry"))


def version_folder(registry: Path, version: str) -> Path:
    return registry / "default" / "versions" / version


def served(out: Path) -> str:
    assert verify_export(out) is None, verify_export(out)
    return json.loads((out / "serving.json").read_text())["version"]


# --- 1. --out never replaces what thumbs did not export ---------------------------------------------------

GUARDED = {  # case -> (the --out, relative to the test folder; what the error says)
    "the current folder": (".", "is the current folder"),
    "a folder holding the current folder": ("..", "contains the current folder"),
    "the registry": ("work/registry", "is registry"),
    "the workdir holding the registry": ("work", "contains registry"),
    "a folder inside the registry": ("work/registry/default/serve", "is inside registry"),
    "the lake": ("work/lake", "not a thumbs export"),
    "the snapshots": ("work/snapshots", "not a thumbs export"),
    "the home folder": ("home", "is your home folder"),
    "the filesystem root": ("/", "is the filesystem root"),
    "a file": ("work/lake/part-0.parquet", "is not a folder"),
}


@pytest.mark.parametrize("case", GUARDED)
def test_export_refuses_an_out_it_would_replace_without_having_written_it(case, registry, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.move(registry, work / "registry")
    for folder in (work / "lake", work / "snapshots", tmp_path / "home", tmp_path / "cwd" / "sub"):
        folder.mkdir(parents=True)
    (work / "lake" / "part-0.parquet").write_bytes(b"events")
    (work / "snapshots" / "stats.json").write_text("{}")
    (tmp_path / "home" / ".bashrc").write_text("# mine")
    (tmp_path / "cwd" / "sub" / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd" / "sub")
    relative, reason = GUARDED[case]
    out = Path(relative) if relative in (".", "..", "/") else tmp_path / relative
    before = tree(tmp_path)

    refused = thumbs("export", "production", "--registry", work / "registry", "--out", out, ok=False)
    assert reason in refused.output and "nothing was changed" in refused.output
    assert tree(tmp_path) == before


@pytest.mark.parametrize("case", ["the workdir", "the lake", "inside the lake", "inside the snapshots"])
def test_the_function_the_nightly_calls_refuses_the_same(case, registry, tmp_path):
    workdir = tmp_path / ".thumbs"  # the nightly's export_dir is a form field: any of these can be typed there
    shutil.move(registry, workdir / "registry")
    for folder in ("lake", "snapshots"):
        (workdir / folder).mkdir()
        (workdir / folder / "data").write_text("mine")
    out = {"the workdir": workdir, "the lake": workdir / "lake", "inside the lake": workdir / "lake" / "serving",
           "inside the snapshots": workdir / "snapshots" / "x" / "serving"}[case]
    before = tree(tmp_path)
    with pytest.raises(ExportError, match="nothing was changed"):
        export(Registry(workdir / "registry"), "production", "peft", out,
               protect=[workdir / "lake", workdir / "snapshots"], log=lambda s: None)
    assert tree(tmp_path) == before and out.exists() == (case in ("the workdir", "the lake"))


# --- 2. one atomic switch; staging and old exports ------------------------------------------------------

@pytest.mark.parametrize("point", ["export.mid_copy", "export.before_switch", "export.after_switch"])
def test_an_export_killed_anywhere_leaves_a_complete_export_serving(point, registry, tmp_path):
    serve = tmp_path / "serve"
    thumbs("export", "previous", "--registry", registry, "--out", serve)
    kill_at(point, "export", "production", "--registry", registry, "--out", serve, workdir=tmp_path / "kill")
    assert served(serve) == ("v0002" if point == "export.after_switch" else "v0001")  # never neither

    thumbs("export", "production", "--registry", registry, "--out", serve)
    assert served(serve) == "v0002"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".serve")) == [".serve.previous"]
    assert verify_export(tmp_path / ".serve.previous") is None


@pytest.mark.parametrize("case", ["an export", "an empty folder", "nothing yet"])
def test_exporting_through_a_symlink_updates_the_folder_it_points_at(case, registry, tmp_path):
    blue, green, serve = tmp_path / "blue", tmp_path / "green", tmp_path / "serve"
    thumbs("export", "previous", "--registry", registry, "--out", green)
    if case == "an export":
        thumbs("export", "previous", "--registry", registry, "--out", blue)
    elif case == "an empty folder":
        blue.mkdir()
    serve.symlink_to(blue)
    green_before = tree(green)

    thumbs("export", "production", "--registry", registry, "--out", serve)
    assert serve.is_symlink() and os.readlink(serve) == str(blue)  # the link stays; its folder is new
    assert served(blue) == "v0002" and tree(green) == green_before
    assert (tmp_path / ".blue.previous").is_dir() == (case == "an export")
    record = json.loads((serve / "serving.json").read_text())
    assert record["adapter_path"] == str(serve)  # vLLM follows the link: a blue/green flip is seen


def test_concurrent_exports_into_one_folder_all_finish_and_leave_no_staging(registry, tmp_path):
    serve, errors = tmp_path / "serve", []

    def one(ref):
        try:
            export(Registry(registry), ref, "peft", serve, log=lambda s: None)
        except Exception as err:  # noqa: BLE001  (collected, asserted below)
            errors.append(err)

    threads = [threading.Thread(target=one, args=(ref,)) for ref in ("production", "previous", "production")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and served(serve) in ("v0001", "v0002")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".serve"))
    assert left == [".serve.previous"] and verify_export(tmp_path / ".serve.previous") is None


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


STALE = {  # staging-like folder -> whether the next export removes it
    "a dead export's half-written staging": (lambda pid, live: f".serve.tmp-{HOST}-{pid}-0123abcd", True),
    "a live export's staging": (lambda pid, live: f".serve.tmp-{HOST}-{live}-0123abcd", False),
    "another host's staging": (lambda pid, live: f".serve.tmp-{'0' * 8 if HOST != '0' * 8 else '1' * 8}-{pid}-0123abcd",
                               False),
    "a name thumbs never writes": (lambda pid, live: ".serve.tmp-mine", False),
    "another folder's staging": (lambda pid, live: f".other.tmp-{HOST}-{pid}-0123abcd", False),
}


@pytest.mark.parametrize("case", STALE)
def test_only_staging_provably_left_by_a_dead_export_is_removed(case, registry, tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        name, removed = STALE[case][0](dead_pid(), sleeper.pid), STALE[case][1]
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"half")
        thumbs("export", "production", "--registry", registry, "--out", tmp_path / "serve")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / name).exists() != removed
    if not removed:
        assert (tmp_path / name / "adapter_model.safetensors").read_bytes() == b"half"


@pytest.mark.parametrize("extra", ["a file added by hand", "an export of an older thumbs (no file list)"])
def test_old_exports_are_deleted_file_by_file_and_what_thumbs_did_not_list_is_kept(extra, registry, tmp_path):
    serve, previous = tmp_path / "serve", tmp_path / ".serve.previous"
    thumbs("export", "previous", "--registry", registry, "--out", serve)
    thumbs("export", "production", "--registry", registry, "--out", serve)
    assert served(previous) == "v0001" and served(serve) == "v0002"  # the one before kept, rollback-friendly
    if extra == "a file added by hand":
        (previous / "NOTES.md").write_text("why we rolled back")
    else:
        record = json.loads((previous / "serving.json").read_text())
        (previous / "serving.json").write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))
    kept_before = tree(previous)

    thumbs("export", "production", "--registry", registry, "--out", serve)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".serve.kept-")]
    assert len(kept) == 1 and tree(kept[0]) == kept_before  # nothing of it deleted
    assert served(previous) == "v0002" and served(serve) == "v0002"

    thumbs("export", "previous", "--registry", registry, "--out", serve)  # a listed-only previous: deleted whole
    assert served(previous) == "v0002" and len([p for p in tmp_path.iterdir() if ".kept-" in p.name]) == 1


# --- 3. modes and quoting -------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_export_folders_and_files_get_the_mode_a_plain_mkdir_gives(umask, registry, tmp_path):
    old = os.umask(umask)
    try:
        for ref in ("previous", "production"):
            export(Registry(registry), ref, "peft", tmp_path / "serve" / "lora", log=lambda s: None)
    finally:
        os.umask(old)
    for folder in (tmp_path / "serve" / "lora", tmp_path / "serve" / ".lora.previous"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, folder
        assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o666 & ~umask}


@pytest.mark.parametrize("fmt,name", [("peft", "it's here"), ("peft", 'say "hi" $HOME `x`'),
                                      ("peft", "two  spaces; rm -rf ~"), ("merged", "it's \"merged\"")])
def test_serving_json_commands_paste_as_one_argument_per_path(fmt, name, registry, tmp_path):
    out = tmp_path / name / "lora"
    serving = export(Registry(registry), "production", fmt, out, dtype="float32", log=lambda s: None)
    for key in ("cli", "server") if fmt == "peft" else ("cli",):
        command = serving["vllm"][key]
        assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command
        words = shlex.split(command)
        assert words[words.index("--chat-template") + 1] == serving["chat_template"]
    words = shlex.split(serving["vllm"]["cli"])
    if fmt == "peft":
        assert words[words.index("--lora-modules") + 1] == f"thumbs={out}"
        assert words[words.index("--model") + 1] == serving["base_model"]
    else:
        assert words[words.index("--model") + 1] == str(out)
    snippet = ast.parse(serving["transformers"])
    assert str(out) in {n.value for n in ast.walk(snippet) if isinstance(n, ast.Constant)}


# --- 4, 5. damaged versions: never deleted, never served -----------------------------------------------

def flip(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {  # how -> (what is done to the version's folder, the file the error names)
    "weights bit-flipped": (lambda v: flip(v / "adapter_model.safetensors"), "adapter_model.safetensors"),
    "config edited": (lambda v: flip(v / "adapter_config.json", 10), "adapter_config.json"),
    "weights truncated": (lambda v: (v / "adapter_model.safetensors").write_bytes(
        (v / "adapter_model.safetensors").read_bytes()[:-1]), "adapter_model.safetensors"),
    "tokenizer deleted": (lambda v: (v / "tokenizer.json").unlink(), "tokenizer.json"),
    "decision edited": (lambda v: flip(v / "decision.json", 5), "decision.json"),
    "manifest torn": (lambda v: (v / "manifest.json").write_text('{"files": {'), "manifest.json"),
    "manifest deleted": (lambda v: (v / "manifest.json").unlink(), "manifest.json"),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_rollback_export_and_list_check_a_version_before_use(how, registry, tmp_path):
    damage, named = DAMAGE[how]
    damage(version_folder(registry, "v0001"))  # previous
    aliases = (registry / "default" / "aliases.json").read_bytes()

    refused = thumbs("rollback", "--registry", registry, ok=False)
    assert f"v0001/{named}" in refused.output and "set-production" in refused.output
    assert (registry / "default" / "aliases.json").read_bytes() == aliases  # production unchanged
    refused = thumbs("export", "previous", "--registry", registry, "--out", tmp_path / "serve", ok=False)
    assert f"v0001/{named}" in refused.output and not (tmp_path / "serve").exists()
    rows = {r["version"]: r for r in json.loads(thumbs("registry", "list", "--registry", registry, "--json").output)}
    assert (rows["v0001"]["integrity"], rows["v0002"]["integrity"]) == ("damaged", "ok")
    assert named in rows["v0001"]["problem"]


@pytest.mark.parametrize("how", DAMAGE)
def test_promote_never_deletes_a_damaged_version_and_cleans_only_its_own_staging(how, world, registry):
    versions = registry / "default" / "versions"
    DAMAGE[how][0](versions / "v0002")  # production
    (versions / ".tmp-v0007-0123abcd").mkdir()  # a local writer's temp copy, left by a kill: ours by its name
    (versions / "v0009").mkdir()  # a version folder without a manifest: not ours to judge
    (versions / "v0009" / "adapter_model.safetensors").write_bytes(b"someone's")
    damaged = tree(versions / "v0002")

    thumbs("promote", "--adapter", world["candidate"], "--registry", registry, "--force")
    assert tree(versions / "v0002") == damaged and (versions / "v0009" / "adapter_model.safetensors").exists()
    assert not (versions / ".tmp-v0007-0123abcd").exists()
    aliases = Registry(registry).aliases()
    assert aliases["previous"] == "v0002" and aliases["production"] == "v0010"
    refused = thumbs("rollback", "--registry", registry, ok=False)  # onto the damaged one: refused
    assert f"v0002/{DAMAGE[how][1]}" in refused.output


# --- 6. aliases.json missing or torn --------------------------------------------------------------------

ALIASES_DAMAGE = {
    "deleted": None,
    "truncated": '{"production": "v0002", "previous": "v0001", "history": ["v0001"',
    "empty": "",
    "not an object": "[]",
    "names a version that is not there": '{"production": "v0005", "previous": null, "history": ["v0005"]}',
    "production not the history's last": '{"production": "v0001", "previous": "v0002", "history": ["v0001", "v0002"]}',
    "a canary that is not there": '{"production": "v0001", "previous": null, "history": ["v0001"], "canary": '
                                  '{"version": "v0009", "share": 0.1, "salt": "ab", "started": "2026-12-07T00:00:00"}}',
    "a canary without its salt": '{"production": "v0001", "previous": null, "history": ["v0001"], "canary": '
                                 '{"version": "v0002", "share": 0.1, "started": "2026-12-07T00:00:00"}}',
}


@pytest.mark.parametrize("case", ALIASES_DAMAGE)
def test_a_missing_or_torn_aliases_file_is_an_error_with_its_repair_not_a_new_registry(case, world, registry,
                                                                                        tmp_path):
    path = registry / "default" / "aliases.json"
    path.unlink() if ALIASES_DAMAGE[case] is None else path.write_text(ALIASES_DAMAGE[case])
    before = tree(registry)
    for args in (("promote", "--adapter", world["candidate"]), ("rollback",), ("registry", "list"),
                 ("export", "production", "--out", tmp_path / "serve")):
        refused = thumbs(*args, "--registry", registry, ok=False)
        assert "aliases.json" in refused.output and "set-production" in refused.output, args
    assert tree(registry) == before and not (tmp_path / "serve").exists()

    thumbs("registry", "set-production", "v0002", "--registry", registry)
    assert Registry(registry).aliases()["production"] == "v0002"
    kept = list((registry / "default").glob("aliases.json.damaged-*"))
    assert [p.read_text() for p in kept] == ([] if ALIASES_DAMAGE[case] is None else [ALIASES_DAMAGE[case]])
    decided = CliRunner().invoke(app, ["promote", "--adapter", str(world["candidate"]), "--registry", str(registry)])
    assert decided.exit_code == 3 and "rejected (registered, not live)" in decided.output  # judged against v0002


def test_set_production_refuses_a_damaged_version_and_none_repairs_a_registry_with_no_production(registry):
    (registry / "default" / "aliases.json").unlink()
    flip(version_folder(registry, "v0001") / "adapter_model.safetensors")
    refused = thumbs("registry", "set-production", "v0001", "--registry", registry, ok=False)
    assert "v0001/adapter_model.safetensors does not match" in refused.output
    assert not (registry / "default" / "aliases.json").exists()
    thumbs("registry", "set-production", "none", "--registry", registry)
    assert Registry(registry).aliases()["production"] is None
    refused = thumbs("registry", "set-production", "v0007", "--registry", registry, ok=False)
    assert "not in registry" in refused.output


# --- 7. object stores -----------------------------------------------------------------------------------

@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.services)])
def store(request, tmp_path):
    if request.param == "memory":
        yield f"memory://deploy-guards-{tmp_path.name}"
        return
    with moto_s3("deploy-guards"):
        yield "s3://deploy-guards/registry"


def test_on_an_object_store_reads_are_verified_and_only_marked_copies_are_cleaned(store, world, tmp_path):
    from deploy.promote import rollback

    registry = Registry(store)
    with registry.lock():
        aliases = registry.aliases()
        registry.write_aliases(aliases)
        for version in ("v0001", "v0002"):
            registry.add_version(version_folder(world["registry"], version), {"promote": True})
            aliases = with_production(aliases, version, "promote")
        registry.write_aliases(aliases)
    weights = registry.path("versions", "v0001", "adapter_model.safetensors")
    data = bytearray(registry.fs.cat_file(weights))
    data[-20] ^= 1
    registry.fs.pipe_file(weights, bytes(data))  # same size: only the sha256 tells

    with pytest.raises(RegistryError, match="v0001/adapter_model.safetensors does not match"):
        rollback(Registry(store), log=lambda s: None)
    assert Registry(store).aliases()["production"] == "v0002"
    with pytest.raises(RegistryError, match="does not match"):
        export(Registry(store), "previous", "peft", tmp_path / "serve", log=lambda s: None)
    assert not (tmp_path / "serve").exists()
    assert [r["integrity"] for r in Registry(store).listing()] == ["damaged", "ok"]

    # An in-place copy its writer marked (killed mid-copy) goes; one with no marker (damage) stays.
    registry.fs.pipe_file(registry.path(".staging", "v0003"), b"{}")
    registry.fs.pipe_file(registry.path("versions", "v0003", "adapter_model.safetensors"), b"half")
    registry.fs.pipe_file(registry.path("versions", "v0004", "adapter_model.safetensors"), b"unmarked")
    with registry.lock():
        registry.clear_partial(registry.aliases())
    assert not registry.fs.exists(registry.path("versions", "v0003"))
    assert registry.fs.cat_file(registry.path("versions", "v0004", "adapter_model.safetensors")) == b"unmarked"

    registry.fs.rm_file(registry.path("aliases.json"))
    with pytest.raises(RegistryError, match="aliases.json is missing"):
        Registry(store).aliases()
