"""Generations kept in the lake, so that a score in a later run still finds the answer it rates.

    LAKE/_generations/<format>/<source sha256 prefix>.parquet    key, rank, generation (JSON)

A source of a joined format (Langfuse, LangSmith, OTel) leaves every generation it holds here, under each
of its keys, whether or not this run rated it: thumbs often arrive days after the answer, and two users
may rate one answer in two runs. Langfuse traces leave their user and session under `traceinfo:<id>`,
for observations stored without them. User ids are stored as their pseudonyms and, with --scrub-pii, the
texts masked: nothing here is more in the clear than the feedback rows. Rows are written in batches as
the source is read, under a temporary name renamed before the source's record, like its other files.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ingest.intake.formats.base import Generation
from ingest.intake.records import BadRow
from ingest.lake import GENERATIONS_DIR, AtomicParquet, committed, parquet_format
from ingest.privacy import scrub_text
from ingest.schema import Reason

DIR = GENERATIONS_DIR
SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("rank", pa.string(), nullable=False),
                    pa.field("generation", pa.binary(), nullable=False)])
STRONG = "~"  # as join.Index ranks: a key's own generation beats any that answers for it weakly
BATCH_ROWS = 50_000


class AlreadyPseudonymized:
    """The pseudonymiser for generations read back from the store: their user ids are pseudonyms already."""

    def __call__(self, user_id: str) -> str:
        return user_id

    def array(self, ids: pa.Array) -> pa.Array:
        return ids


def _scrubbed(value, scrub: bool):
    if not scrub:
        return value
    if isinstance(value, str):
        return scrub_text(value)[0]
    if isinstance(value, list):
        return [{**m, "content": scrub_text(m["content"])[0]} if isinstance(m, dict) and isinstance(
            m.get("content"), str) else m for m in value]
    return value


class Store:
    """One source's generations, appended as they are read; committed or aborted with the source."""

    def __init__(self, lake: Path, fmt: str, sha256: str, pseudonymize, scrub: bool, submit=None):
        """`submit(fn, *args)` runs a write (in the order given: the run's writing thread); default: at once."""
        self.out = AtomicParquet(lake / DIR / fmt / f"{sha256[:16]}.parquet", SCHEMA)
        self.submit = submit or (lambda fn, *args: fn(*args))
        self.pseudonymize, self.scrub = pseudonymize, scrub
        self._keys: list[str] = []
        self._ranks: list[str] = []
        self._data = bytearray()  # the JSON blobs back to back: orjson's own buffers are 4 KiB each
        self._offsets = [0]

    def _row(self, key: str, rank: str, blob: bytes) -> None:
        self._keys.append(key)
        self._ranks.append(rank)
        self._data += blob
        self._offsets.append(len(self._data))

    def _user(self, user):
        return self.pseudonymize(user) if isinstance(user, str) and user else user

    def add(self, gen: Generation) -> None:
        blob = orjson.dumps({
            "prompt": _scrubbed(gen.prompt, self.scrub), "completion": _scrubbed(gen.completion, self.scrub),
            "timestamp": gen.timestamp, "user_id": self._user(gen.user_id), "conversation_id": gen.conversation_id,
            "model_version": gen.model_version, "trace": gen.trace,
            "refused": [gen.refused.reason.value, gen.refused.detail] if gen.refused is not None else None},
            default=str)
        for key in gen.keys:
            self._row(key, STRONG, blob)
        if gen.weak is not None:
            self._row(gen.weak, "0" + gen.rank, blob)
        if len(self._keys) >= BATCH_ROWS:
            self.flush()

    def add_trace(self, trace_id: str, user, session) -> None:
        self._row(f"traceinfo:{trace_id}", STRONG, orjson.dumps({"user_id": self._user(user), "session": session},
                                                                default=str))

    def flush(self) -> None:
        if not self._keys:
            return
        self.submit(self._write, self._keys, self._ranks, self._data, self._offsets)
        self._keys, self._ranks, self._data, self._offsets = [], [], bytearray(), [0]

    def _write(self, keys: list, ranks: list, data: bytearray, offsets: list) -> None:
        blobs = pa.BinaryArray.from_buffers(pa.binary(), len(keys), [
            None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]), pa.py_buffer(bytes(data))])
        self.out.write(pa.table([pa.array(keys, pa.string()), pa.array(ranks, pa.string()), blobs], schema=SCHEMA))

    def commit(self) -> None:
        """Make the file the source's: after `flush`, once the writes `submit` took have finished."""
        self.out.commit()

    def abort(self) -> None:
        self.out.abort()


def _best(lake: Path, fmt: str, wanted: set[str]) -> dict[str, dict]:
    if not wanted or not (lake / DIR / fmt).exists():
        return {}
    files = committed(lake, f"{DIR}/{fmt}")  # recorded sources' files only, each checked against its record
    if not files:
        return {}
    table = ds.dataset([str(f) for f in files], schema=SCHEMA, format=parquet_format()).to_table(
        filter=pc.field("key").isin(pa.array(sorted(wanted), pa.string())))
    best: dict[str, tuple[str, bytes]] = {}
    for key, rank, blob in zip(*(table.column(n).to_pylist() for n in ("key", "rank", "generation"))):
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, blob)
    return {key: orjson.loads(blob) for key, (_, blob) in best.items()}


def find(lake: Path, fmt: str, wanted: set[str], run_traces: dict, pseudonymize) -> dict[str, Generation]:
    """The stored generation for each wanted key that earlier runs left, its user and session filled from
    its stored trace, else from a trace of this run (whose raw user id is pseudonymised here)."""
    found = _best(lake, fmt, wanted)
    traces = _best(lake, fmt, {f"traceinfo:{g['trace']}" for g in found.values() if g.get("trace")})
    out = {}
    for key, g in found.items():
        user, session = g["user_id"], g["conversation_id"]
        if g.get("trace") and (user is None or session is None):
            info = traces.get(f"traceinfo:{g['trace']}")
            if info is None and g["trace"] in run_traces:
                raw_user, raw_session = run_traces[g["trace"]]
                info = {"user_id": pseudonymize(raw_user) if isinstance(raw_user, str) and raw_user else raw_user,
                        "session": raw_session}
            if info is not None:
                user = info["user_id"] if user is None else user
                session = info["session"] if session is None else session
        refused = g.get("refused")  # what thumbs cannot keep as text: its later ratings say so, not orphan_feedback
        out[key] = Generation(keys=(key,), prompt=g["prompt"], completion=g["completion"], timestamp=g["timestamp"],
                              user_id=user, conversation_id=session, model_version=g["model_version"], used=True,
                              refused=BadRow(Reason(refused[0]), refused[1]) if refused else None)
    return out
