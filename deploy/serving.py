"""Put an exported adapter into a running vLLM OpenAI-compatible server, without a moment of no service.

    thumbs export production --registry REG --out serve/lora --notify http://vllm:8000 [--alias thumbs]
    publish("http://vllm:8000", Path("serve/lora"), alias="thumbs")

The server runs with `--enable-lora --max-lora-rank R` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
(deploy/vllm_server.py); clients send `"model": "thumbs"` (the alias). A swap to version V:

1. the export is copied to `<out>.versions/V/` and checked against the sizes and sha256 its
   serving.json lists: vLLM re-reads an adapter's folder whenever it drops it from its cache, so every
   name it serves needs a folder that never changes under it (mode as a plain mkdir gives, so a server
   running as another user reads it);
2. `/v1/load_lora_adapter` loads it as `thumbs-V`, and a completion checks that name answers;
3. the alias is re-pointed at the same folder (`load_inplace`: vLLM loads the new weights before it
   drops the old, so no request finds the alias missing), and /v1/models and a completion check it;
4. only then is the previous `thumbs-vNNNN` unloaded and its folder deleted (only folders named like
   versions or this module's staging folders: nothing else in `<out>.versions/` is touched).

A running canary release (deploy/canary.py) is served beside production: its export (`<out>.canary`, whose
serving.json states the share, salt and assignment rule) is staged the same way and loaded as `thumbs-V`
only, never as the alias; the application routes each user to one of the two versioned names
(deploy/rollout.py). A publish without a canary unloads any earlier one: that is a canary's rollback.

A failure in 2 or 3 undoes what was done (the alias back on its old folder, `thumbs-V` unloaded), so
the server keeps serving the previous version, and the `ServingError` says which that is. Rollback is
the same swap towards the older version. Publishing what is already served only checks it answers.
The server must see the folders at the same paths (one machine, or a shared mount). VLLM_API_KEY,
when set, is sent as the bearer token and never logged.

vLLM CPU caveat: a batch mixing adapter and no-adapter requests can give the no-adapter request the
adapter (an open upstream bug); the checks here send adapter requests only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

PROBE = {"prompt": "Hello", "max_tokens": 4, "temperature": 0.0, "ignore_eos": True}
STAGED = ("adapter_config.json", "adapter_model.safetensors", "serving.json")
STAGED_RE = re.compile(r"^\.?v\d+(\.tmp-[0-9a-f]+)?$")  # the folders _stage writes in <out>.versions/


class ServingError(RuntimeError):
    """The server could not be made to serve the adapter; the message says what it serves now."""


class Client:
    """The few vLLM OpenAI-server endpoints thumbs needs, over plain HTTP."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._key = os.environ.get("VLLM_API_KEY")

    def _call(self, method: str, path: str, body: Optional[dict] = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self._key:
            request.add_header("Authorization", f"Bearer {self._key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                text = reply.read().decode()
        except urllib.error.HTTPError as err:
            raise ServingError(f"{method} {path}: HTTP {err.code}: {_server_message(err)}{_hint(err.code, path)}") from err
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            raise ServingError(f"vLLM server at {self.url} unreachable ({getattr(err, 'reason', err)})") from err
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def adapters(self) -> dict:
        """LoRA name -> the folder the server loads it from (base models left out)."""
        return {m["id"]: m.get("root") for m in self._call("GET", "/v1/models")["data"] if m.get("parent")}

    def load(self, name: str, path: str, inplace: bool = False) -> None:
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path, "load_inplace": inplace})

    def unload(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def completion(self, model: str, **fields) -> dict:
        """The first choice of a completion from `model` (a base or LoRA name), with its token ids."""
        reply = self._call("POST", "/v1/completions", dict(PROBE, model=model, return_token_ids=True, **fields))
        return reply["choices"][0]

    def complete(self, model: str, **fields) -> list:
        """Greedy token ids of a completion from `model`."""
        return list(self.completion(model, **fields).get("token_ids") or [])


def _server_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode())
        return (body.get("error") or {}).get("message") or body.get("message") or json.dumps(body)
    except Exception:  # noqa: BLE001  (not JSON: the status line says enough)
        return err.reason


def _hint(code: int, path: str) -> str:
    if code in (404, 405) and "lora_adapter" in path:
        return (" (is runtime LoRA updating on? start vLLM with --enable-lora and the environment variable "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
    return ""


def versioned_name(alias: str, version: str) -> str:
    return f"{alias}-{version}"


def publish(url: str, export_dir: Path, *, alias: str = "thumbs", canary_dir: Optional[Path] = None,
            log: Callable[[str], None] = print, timeout_s: float = 120.0) -> dict:
    """Make the server at `url` answer `alias` with the adapter exported in `export_dir` (see the module doc), and,
    with `canary_dir` (a running canary release's export), serve the canary beside it as `alias-vNNNN`. Every other
    `alias-vNNNN` is unloaded: a canary that is no longer passed is gone after this call."""
    export_dir = Path(export_dir).resolve()
    serving = _read_serving(export_dir)
    version, client = serving["version"], Client(url, timeout_s)
    root = export_dir.with_name(f"{export_dir.name}.versions")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        loaded = client.adapters()  # first: a server that is down gets nothing staged for it
        folder = _stage(export_dir, root / version, serving)
        previous = _served_version(loaded, alias, root)
        name = versioned_name(alias, version)
        changed = not (loaded.get(alias) == str(folder) and loaded.get(name) == str(folder))
        if changed:
            try:
                _swap(client, loaded, alias, name, str(folder), previous, url, log)
            except ServingError:
                _drop_unused(client, folder)
                raise
        else:
            _answers(client, alias)
        keep, folders, canary = {name}, {folder}, None
        if canary_dir is not None:
            canary, canary_folder = _serve_canary(client, alias, root, Path(canary_dir).resolve(), version, url, log)
            keep.add(canary)
            folders.add(canary_folder)
        retired = _retire(client, client.adapters(), alias, keep, root, folders)
    if changed:
        log(f"serve: {url} now answers '{alias}' with {version} (was {previous or 'none'}); "
            f"retired {', '.join(retired) or 'nothing'}")
    else:
        log(f"serve: {url} already serves {version} as '{alias}'"
            + (f"; retired {', '.join(retired)}" if retired else ""))
    return {"url": url, "alias": alias, "version": version, "previous": previous, "changed": changed,
            "retired": retired, "path": str(folder), "canary": canary}


def _serve_canary(client: Client, alias: str, root: Path, canary_dir: Path, production: str, url: str,
                  log: Callable[[str], None]) -> tuple:
    """The canary's export staged like production's and loaded under its versioned name (never the alias), checked
    to answer; on failure it is unloaded and production keeps serving. Returns (its name, its folder)."""
    serving = _read_serving(canary_dir)
    version = serving["version"]
    if version == production:
        raise ServingError(f"{canary_dir} holds {version}, which is production: not a canary")
    folder, name = _stage(canary_dir, root / version, serving), versioned_name(alias, version)
    loaded = client.adapters()
    if loaded.get(name) == str(folder):
        _answers(client, name)
        return name, folder
    try:
        client.load(name, str(folder), inplace=name in loaded)
        _answers(client, name)
    except ServingError as err:
        try:
            client.unload(name)
        except ServingError:
            pass
        raise ServingError(f"{url}: the canary {name} could not be served ({err}); '{alias}' still serves "
                           f"{production}") from err
    log(f"serve: loaded the canary {name} from {folder} beside '{alias}'; it answers")
    return name, folder


def _swap(client: Client, loaded: dict, alias: str, name: str, folder: str, previous: Optional[str], url: str,
          log: Callable[[str], None]) -> None:
    """Steps 2 and 3: the versioned name, then the alias, each checked; undone on failure."""
    undo = []
    try:
        client.load(name, folder, inplace=name in loaded)
        undo.append(lambda: client.unload(name) if name not in loaded else client.load(name, loaded[name], True))
        _answers(client, name)
        log(f"serve: loaded {name} from {folder}; it answers")
        client.load(alias, folder, inplace=alias in loaded)
        undo.append(lambda: client.load(alias, loaded[alias], True) if alias in loaded else client.unload(alias))
        if client.adapters().get(alias) != folder:
            raise ServingError(f"after loading, /v1/models does not list '{alias}' at {folder}")
        _answers(client, alias)
    except ServingError as err:
        problems = []
        for step in reversed(undo):
            try:
                step()
            except ServingError as undo_err:
                problems.append(str(undo_err))
        now = f"'{alias}' still serves {previous}" if previous else f"'{alias}' is not served"
        if problems:
            now = f"undoing failed too ({'; '.join(problems)}): check the server's /v1/models"
        raise ServingError(f"{url}: {err}; {now}") from err


def _answers(client: Client, model: str) -> None:
    if not client.complete(model):
        raise ServingError(f"'{model}' returned no tokens")


def _retire(client: Client, loaded: dict, alias: str, keep: set, root: Path, folders: set) -> list:
    """Step 4: unload the `alias-vNNNN` names not in `keep` and delete the folders nothing served still uses."""
    pattern = re.compile(rf"^{re.escape(alias)}-v\d+$")
    retired = []
    for other in sorted(n for n in loaded if pattern.match(n) and n not in keep):
        client.unload(other)
        retired.append(other)
    in_use = set(client.adapters().values())
    for stale in root.iterdir():  # only what _stage writes: vNNNN and its staging folders
        if stale.is_dir() and STAGED_RE.match(stale.name) and stale not in folders and str(stale) not in in_use:
            shutil.rmtree(stale, ignore_errors=True)
    return retired


def _drop_unused(client: Client, folder: Path) -> None:
    """After a failed swap: the staged folder goes, unless the server still loads something from it."""
    try:
        in_use = str(folder) in set(client.adapters().values())
    except ServingError:
        return  # cannot tell: keep it; the next publish cleans up
    if not in_use:
        shutil.rmtree(folder, ignore_errors=True)


def _served_version(loaded: dict, alias: str, root: Path) -> Optional[str]:
    """Which version the alias serves now: its folder's name under `root`, or the `alias-vNNNN` name that
    shares its folder; None when the alias is not loaded."""
    path = loaded.get(alias)
    if not path:
        return None
    if Path(path).parent == root:
        return Path(path).name
    twins = [n[len(alias) + 1:] for n, p in loaded.items() if p == path and n.startswith(f"{alias}-v")]
    return twins[0] if twins else f"the adapter at {path}"


def _read_serving(export_dir: Path) -> dict:
    path = export_dir / "serving.json"
    if not path.is_file():
        raise ServingError(f"{path} not found: `thumbs export ... --format peft --out {export_dir}` first")
    try:
        serving = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServingError(f"{path} is unreadable ({err}): export again (`thumbs export ... --out {export_dir}`)") \
            from err
    kind = serving.get("format") if isinstance(serving, dict) else "unreadable"
    if kind != "peft":
        raise ServingError(f"{export_dir} holds a {kind} export; the server hot-swaps LoRA "
                           "adapters: export --format peft (a merged model is served by starting vLLM on it)")
    return serving


def _stage(export_dir: Path, folder: Path, serving: dict) -> Path:
    """Step 1: the export copied to a folder of its own, written under a temp name, checked, and renamed."""
    existing = folder / "serving.json"
    if existing.is_file() and json.loads(existing.read_text()) == serving and _mismatch(folder, serving) is None:
        return folder
    staging = folder.with_name(f".{folder.name}.tmp-{os.urandom(4).hex()}")
    staging.mkdir()  # a plain mkdir's mode (umask), not mkdtemp's 0700: the server may run as another user
    try:
        for name in STAGED:
            shutil.copyfile(export_dir / name, staging / name)
        problem = _mismatch(staging, serving)
        if problem is not None:
            raise ServingError(f"{export_dir}: {problem}; export it again (`thumbs export ... --out {export_dir}`)")
        if folder.exists():
            shutil.rmtree(folder)  # a vNNNN folder an earlier publish staged, no longer as serving.json says
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _mismatch(folder: Path, serving: dict) -> Optional[str]:
    """Which staged file differs from the size and sha256 serving.json lists (exports that list none pass)."""
    files = serving.get("files")
    for name in STAGED[:2] if isinstance(files, dict) else ():
        path, entry = folder / name, files.get(name) or {}
        if not path.is_file():
            return f"{name} is missing"
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        if (path.stat().st_size, digest.hexdigest()) != (entry.get("size"), entry.get("sha256")):
            return f"{name} does not match serving.json (size or sha256 differs)"
    return None


class _locked:
    """One publish at a time per serving folder (a nightly run and a manual one could race)."""

    def __init__(self, root: Path):
        self.path = root / ".lock"

    def __enter__(self):
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
