"""Generations kept in the lake, so that a score in a later run still finds the answer it rates.

    LAKE/_generations/<format>/<source sha256 prefix>.parquet    key, rank, generation (JSON)

A source of a joined format (Langfuse, LangSmith, OTel) leaves every generation it holds here, under each
of its keys, whether or not this run rated it: thumbs often arrive days after the answer, and two users
may rate one answer in two runs. The user id is stored as its pseudonym and, with --scrub-pii, the texts
masked: nothing here is more in the clear than the feedback rows. Written under a temporary name and
renamed before the source's record, like every other file of the source.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ingest.formats.base import Generation
from ingest.lake import AtomicParquet
from ingest.privacy import scrub_text

DIR = "_generations"
SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("rank", pa.string(), nullable=False),
                    pa.field("generation", pa.binary(), nullable=False)])
STRONG = "~"  # as join.Index ranks: a key's own generation beats any that answers for it weakly


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


def write(lake: Path, fmt: str, sha256: str, gens: list[Generation], pseudonymize, scrub: bool) -> AtomicParquet:
    """The source's generations to a temporary file; the caller commits it (or aborts it) with the source."""
    keys, ranks, blobs = [], [], []
    for gen in gens:
        user = gen.user_id if isinstance(gen.user_id, str) and gen.user_id else None
        blob = orjson.dumps({
            "prompt": _scrubbed(gen.prompt, scrub), "completion": _scrubbed(gen.completion, scrub),
            "timestamp": gen.timestamp, "user_id": pseudonymize(user) if user else gen.user_id,
            "conversation_id": gen.conversation_id, "model_version": gen.model_version}, default=str)
        for key in gen.keys:
            keys.append(key), ranks.append(STRONG), blobs.append(blob)
        if gen.weak is not None:
            keys.append(gen.weak), ranks.append("0" + gen.rank), blobs.append(blob)
    out = AtomicParquet(lake / DIR / fmt / f"{sha256[:16]}.parquet", SCHEMA)
    out.write(pa.table([keys, ranks, blobs], schema=SCHEMA))
    return out


def find(lake: Path, fmt: str, wanted: set[str]) -> dict[str, Generation]:
    """The stored generation for each wanted key that earlier runs left (the best-ranked one per key)."""
    folder = lake / DIR / fmt
    if not wanted or not folder.exists():
        return {}
    table = ds.dataset(folder, schema=SCHEMA, format="parquet").to_table(
        filter=pc.field("key").isin(pa.array(sorted(wanted), pa.string())))
    best: dict[str, tuple[str, bytes]] = {}
    for key, rank, blob in zip(*(table.column(n).to_pylist() for n in ("key", "rank", "generation"))):
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, blob)
    out = {}
    for key, (_, blob) in best.items():
        g = orjson.loads(blob)
        out[key] = Generation(keys=(key,), prompt=g["prompt"], completion=g["completion"], timestamp=g["timestamp"],
                              user_id=g["user_id"], conversation_id=g["conversation_id"],
                              model_version=g["model_version"], used=True)
    return out
