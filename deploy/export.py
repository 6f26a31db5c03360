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
(a Jinja equivalent of the plain HH template when the tokenizer has none), ready-to-paste vLLM and
transformers snippets (shell words quoted, the template inline: vLLM takes --chat-template as text), and `files`:
the size and sha256 of every other file, the export's proof (`serving_record` checks it).

`--out` is only ever replaced when it is safe: a new or empty folder, or an earlier thumbs export (it
holds serving.json). Anything else is refused, saying why: a folder that is not an export, one that is or
contains the registry, the current folder, the home folder or `/` (and, from the nightly, the lake and
the snapshots). Through a symlink (blue/green layouts) the folder it points at is the one written; the
link stays. The export is written to a staging folder beside it, `.OUT.tmp-HOST-PID-RANDOM`, then
swapped with `--out` in one step (renameat2 RENAME_EXCHANGE), so a reader (a vLLM server restarting)
finds the old export or the new one, never neither, and a kill at any point leaves the old one serving.
The export it replaced is kept as `.OUT.previous` (rollback-friendly); the one before is deleted, but
only the files its serving.json lists: anything else found in it is kept, renamed `.OUT.kept-...`.
Staging folders of dead exports on this host are removed; others' never. Folders get the mode a plain
mkdir gives (umask), so a server running as another user can read them. A full disk raises DiskFull
naming `--out`, with the staging folder removed and the old export left serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from deploy import vllm_rules, vllm_server
from deploy.config import DTYPES, FORMATS
from deploy.registry import Registry, RegistryError
from common.faults import as_disk_full, fault_point
from training.model import resolve_model_path, weights_fingerprint
from training.run_folder import read_meta

SERVING = "serving.json"  # an export's marker and record: what it holds, and the proof of every other file
# The plain template of training/data.py, as a chat template serving engines can apply.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '\\n\\n' }}"
    "{% if message['role'] == 'user' %}Human{% elif message['role'] == 'assistant' %}Assistant"
    "{% else %}{{ message['role'] | capitalize }}{% endif %}: {{ message['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}")
# peft keys that only mean something on a quantised base (LoftQ init, QA-LoRA): dropped when unused, so a
# serving engine never wonders whether the adapter needs a 4-bit base.
QUANTIZED_ONLY = ("loftq_config", "use_qalora", "qalora_group_size")
HOST = hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:8]  # whose staging folders this process may judge
STAGING_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")
EXCHANGE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


class ExportError(RegistryError):
    """`--out` cannot be written safely; nothing was changed."""


def export(registry: Registry, ref: str, fmt: str, out: Path, *, dtype: str = "bfloat16",
           base_model: str | None = None, max_lora_rank: int | None = None, for_vllm: bool = False,
           protect: Iterable = (), log: Callable[[str], None] = print) -> dict:
    """Write `ref` ('production', 'previous' or a version) of `registry` to `out` as `fmt`; return serving.json.

    `out` is refused unless it is new, empty or an earlier export (see the module doc); `protect`: more
    folders it must neither be nor contain (the nightly passes its lake and snapshots). A peft export is
    refused when vLLM would refuse the adapter (deploy/vllm_rules.py), ranks above `max_lora_rank` (the
    server's --max-lora-rank; default vLLM's largest) included. `for_vllm` (the export feeds a vLLM server)
    also refuses bases vLLM serves without LoRA, which otherwise only get a note."""
    if max_lora_rank is not None:
        vllm_rules.check_max_lora_rank(max_lora_rank)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(os.path.abspath(out))  # what serving.json and vLLM name: through a user's symlink, not past it
    target = check_out(out, registry, protect)
    version = registry.resolve(ref)
    with tempfile.TemporaryDirectory(prefix=".thumbs-export-") as scratch, \
            registry.checkout(version, Path(scratch)) as source:  # checked against the version's manifest
        meta = read_meta(source)
        staging = None
        try:
            staging = _new_staging(target)
            serving = _write(registry, version, fmt, dtype, source, meta, staging, out, base_model, max_lora_rank,
                             for_vllm, log)
        except BaseException as err:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)  # created above: only this export wrote there
            full = as_disk_full(out, err)
            if full is not None:
                raise full from err
            raise
        _switch(staging, target, log)
    if fmt == "peft" and serving["vllm"].get("note"):
        log(f"export: note: {serving['vllm']['note']}")
    log(f"export: {registry.name} {version} ({ref}) as {fmt} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return serving


def _write(registry: Registry, version: str, fmt: str, dtype: str, source: Path, meta: dict, staging: Path,
           out: Path, base_model, max_lora_rank, for_vllm: bool, log) -> dict:
    """The export's files in `staging`, serving.json (with every other file's size and sha256) last."""
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
    serving["files"] = {p.name: _proof(p) for p in sorted(staging.iterdir()) if p.name != SERVING}
    (staging / SERVING).write_text(json.dumps(serving, indent=2))
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
    # Training ran on a local path; serving knows the base by its id (a GGUF base: by its dequantised folder).
    kept = {k: v for k, v in config.items() if k not in QUANTIZED_ONLY}
    return dict(kept, base_model_name_or_path=serving_base(meta), inference_mode=True)


def serving_base(meta: dict) -> str:
    """The base a server loads the adapter onto: the id or path training was given, except for a GGUF file, whose
    dequantised folder (training/gguf.py) is the model the adapter was trained on (vLLM's GGUF path takes no LoRA)."""
    return meta["base_model_path"] if meta.get("base_model_gguf") else meta["base_model"]


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
    base, path = serving_base(meta), str(out)
    serving = {
        "format": fmt, "registry": registry.url, "name": registry.name, "version": version,
        "base_model": base, "base_model_sha256": meta["base_model_sha256"], "snapshot_id": meta.get("snapshot_id"),
        "base_model_gguf": meta.get("base_model_gguf"),  # set: the export is for this file's dequantised weights
        "architecture": architecture, "trained_on_quantization": meta["config"]["quantize"],
        "lora_rank": rank, "lora_alpha": config.get("lora_alpha"), "max_lora_rank": max_rank,
        "target_modules": config.get("target_modules"),
        "chat_template_source": "tokenizer" if template is not PLAIN_CHAT_TEMPLATE else "thumbs plain HH template",
        "chat_template": template,
        "eval": {"auc": (evaluation.get("preference") or {}).get("auc"),
                 "kl_per_token": (evaluation.get("drift") or {}).get("kl_per_token")},
    }
    canary = registry.aliases()["canary"]
    if canary is not None and canary["version"] == version:  # the arms, for the application that routes them
        serving["canary"] = {k: canary[k] for k in ("share", "salt", "started", "against")} | {
            "rule": "deploy.rollout.assign(pseudonymous user id, salt, share) == 'canary': this adapter (served "
                    "as ALIAS-" + version + "); otherwise, and without a user id, production (ALIAS-"
                    + str(canary["against"]) + ")"}
    # Shell words quoted: a path with a space or a quote pastes as one argument.
    template_flag = ["--chat-template", shlex.quote(template)] if template is PLAIN_CHAT_TEMPLATE else []
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
        serving["vllm"] = {"cli": " ".join(["python", "-m", vllm_server.ENTRYPOINT, "--model", shlex.quote(path),
                                            "--dtype", dtype, *template_flag]),
                           "python": f"from vllm import LLM\nllm = LLM(model={path!r}, dtype={dtype!r})"}
        serving["transformers"] = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                                   f"model = AutoModelForCausalLM.from_pretrained({path!r}, dtype={dtype!r})\n"
                                   f"tokenizer = AutoTokenizer.from_pretrained({path!r})")
    return serving


def _vllm_peft(base: str, path: str, max_rank: int, architecture: str | None, template_flag: list) -> dict:
    """How vLLM serves the adapter: statically (`cli`), hot-swapped into a running server (`server` + `load`,
    what `thumbs export --notify` does), or in-process (`python`)."""
    server = ["python", "-m", vllm_server.ENTRYPOINT, "--model", shlex.quote(base), *vllm_server.lora_flags(max_rank)]
    block = {
        "version": vllm_rules.VLLM_VERSION, "lora_supported": vllm_rules.lora_supported(architecture),
        "cli": " ".join([*server, "--lora-modules", shlex.quote(f"thumbs={path}"), *template_flag]),
        "server": " ".join([f"{vllm_server.RUNTIME_UPDATING}=True", *server, *template_flag]),
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


def check_out(out: Path, registry: Optional[Registry] = None, protect: Iterable = ()) -> Path:
    """The folder an export to `out` writes (through a symlink, the folder it points at), after refusing an
    `out` that is or contains the registry, a `protect` folder, the current folder, the home folder or `/`,
    lies inside the registry, or holds something that is not a thumbs export. Raises ExportError saying why."""
    target = Path(os.path.realpath(out))
    # (what, folder, whether an export may live inside it): never one of these, nor a folder holding one
    guarded = [("the filesystem root", "/", True), ("your home folder", Path.home(), True),
               ("the current folder", Path.cwd(), True)]
    if registry is not None and registry.local:
        guarded.append((f"registry {registry.url}", os.path.dirname(registry.root.rstrip("/")), False))
    guarded += [(f"{p}, a folder the pipeline reads", p, False) for p in protect if p and "://" not in str(p)]
    for what, path, may_hold in guarded:
        path = Path(os.path.realpath(path))
        if path == target or path.is_relative_to(target):
            raise ExportError(f"--out {out} {'is' if path == target else 'contains'} {what} ({path}); an export "
                              "replaces its folder whole, so --out must be a folder of its own (e.g. "
                              f"{Path(out) / 'serving'} when it is new); nothing was changed")
        if not may_hold and target.is_relative_to(path):
            raise ExportError(f"--out {out} is inside {what}; export to a folder outside it; nothing was changed")
    _check_replaceable(target, out)
    return target


def _check_replaceable(target: Path, out: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder; nothing was changed")
    if target.is_dir() and any(target.iterdir()) and not (target / SERVING).is_file():
        raise ExportError(f"--out {out} is a folder that is not a thumbs export (no {SERVING}): thumbs only "
                          "replaces an empty folder or its own export. Choose a new folder, or move its contents "
                          "away; nothing was changed")


def _new_staging(target: Path) -> Path:
    """A staging folder beside `target`, named for this host and process so that no other export ever takes
    it for its own; a plain mkdir (the umask's mode, not mkdtemp's 0700) so other users can read it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _switch(staging: Path, target: Path, log: Callable[[str], None]) -> None:
    """Put `staging` at `target` in one step, keep what served before as `.NAME.previous`, and delete the
    one before that (its listed files only). One export at a time per folder (a lock on the parent)."""
    with _folder_lock(target.parent):
        try:
            _clear_stale(target, log)
            _check_replaceable(target, target)  # again, under the lock: another export may have written it
            fault_point("export.before_switch")  # complete in staging; `target` still the old export
            if not target.exists():
                os.rename(staging, target)
                return
            _exchange(staging, target, log)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # not switched in: still only this export's files
            raise
        # `staging` now holds the folder that served until a moment ago
        fault_point("export.after_switch")
        if not any(staging.iterdir()):
            staging.rmdir()
            return
        previous = target.with_name(f".{target.name}.previous")
        if previous.exists():
            _discard(previous, target, log)
        os.rename(staging, previous)


def _exchange(new: Path, target: Path, log: Callable[[str], None]) -> None:
    """Swap two folders atomically: Linux renameat2(RENAME_EXCHANGE), macOS renamex_np(RENAME_SWAP). Where
    the filesystem has neither (some network filesystems), two renames, with a window the log admits."""
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = os.fsencode(new), os.fsencode(target)
    if hasattr(libc, "renameat2"):
        rc = libc.renameat2(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE
    elif hasattr(libc, "renamex_np"):
        rc = libc.renamex_np(a, b, 2)  # RENAME_SWAP
    else:
        rc = None
    if rc == 0:
        return
    code = ctypes.get_errno() if rc is not None else errno.ENOSYS
    if code not in EXCHANGE_UNSUPPORTED:
        raise OSError(code, os.strerror(code), str(target))
    log(f"export: the filesystem under {target.parent} cannot swap folders in one step; switching with two "
        "renames (a reader in between finds no export)")
    aside = _new_staging(target)
    os.replace(target, aside)  # onto the empty folder just made
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)  # the old export back in place
        raise
    os.rename(aside, new)


def _clear_stale(target: Path, log: Callable[[str], None]) -> None:
    """Staging folders of exports to `target` whose process died on this host: provably thumbs', since only
    thumbs names folders so, and the dead process can no longer write there. Others are never touched."""
    for path in target.parent.glob(f".{target.name}.tmp-*"):
        match = STAGING_RE.match(path.name)
        if not match or match["name"] != target.name or match["host"] != HOST or _alive(int(match["pid"])):
            continue
        if (path / SERVING).is_file():
            _discard(path, target, log)  # complete, or the export it replaced just before it died
        else:
            shutil.rmtree(path, ignore_errors=True)  # half-written: every file in it is the dead export's
        log(f"export: removed {path.name}, left by an export that was killed")


def remove_export(out: Path, log: Callable[[str], None] = print) -> None:
    """Delete the export in `out` (one thumbs wrote: only the files its serving.json lists; anything else keeps
    the folder, renamed, see `_discard`). Nothing happens when `out` holds no export."""
    out = Path(os.path.abspath(out))
    if (out / SERVING).is_file():
        with _folder_lock(out.parent):
            _discard(out, out, log)
        log(f"export: removed the export in {out}")


def _discard(folder: Path, target: Path, log: Callable[[str], None]) -> None:
    """Delete an export thumbs wrote, file by file: only those its serving.json lists, and serving.json. If
    the folder holds anything else (added by hand, or an export of a thumbs that listed no files), nothing
    is deleted: it is renamed `.NAME.kept-TIME` and the log says so."""
    listed = set(_read_json(folder / SERVING).get("files") or {})
    entries = list(folder.iterdir())
    if all(p.name in listed | {SERVING} and p.is_file() and not p.is_symlink() for p in entries):
        for p in entries:
            p.unlink()
        folder.rmdir()
        return
    kept = target.with_name(f".{target.name}.kept-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-"
                            f"{uuid.uuid4().hex[:6]}")
    os.rename(folder, kept)
    log(f"export: {folder.name} holds files thumbs did not write (or did not list); kept as {kept}: delete it "
        "when you no longer need it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An OS lock on the folder itself (no lock file to leave behind), released if the holder dies."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _proof(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def verify_export(out: Path) -> Optional[str]:
    """What is wrong with the export in `out` (a file missing, or not as serving.json lists it), or None."""
    record = _read_json(Path(out) / SERVING)
    files = record.get("files")
    if not record or not isinstance(files, dict):
        return f"{Path(out) / SERVING} is missing, unreadable or lists no files"
    for name, entry in files.items():
        path = Path(out) / str(name)
        if "/" in str(name) or not path.is_file() or _proof(path) != entry:
            return f"{path} is missing or does not match {SERVING}"
    return None


def serving_record(out: Path) -> dict:
    """The serving.json of an export folder once every file it lists is checked, {} when there is none or the
    export is damaged (the nightly then exports again, replacing it)."""
    return _read_json(Path(out) / SERVING) if verify_export(out) is None else {}


def holds(record: dict, registry: Registry, version: str, fmt: str) -> bool:
    """Whether an export folder's serving.json says it holds `version` of this registry's model in `fmt`."""
    return (record.get("version"), record.get("format"), record.get("registry"), record.get("name")) == \
        (version, fmt, registry.url, registry.name)
