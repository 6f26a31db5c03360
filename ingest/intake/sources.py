"""Read a JSONL source (plain or .gz) as blocks of whole lines, with line numbers and bounded memory.

A UTF-8 byte-order mark at the start of the file is dropped (a BOM anywhere else is part of its line).
A line longer than `max_line_bytes` is never held whole: it comes back as an `OversizedLine` holding
its first bytes, and reading resumes at the next newline.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

BLOCK_BYTES = 16 << 20
RAW_KEEP_BYTES = 64 << 10  # of an oversized line, what quarantine keeps
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class Block:
    first_line: int  # 1-based number of the block's first line
    data: bytes  # whole lines, newline-separated, no trailing newline
    n_lines: int

    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")

    def split(self, max_lines: int) -> Iterator["Block"]:
        """This block as blocks of at most `max_lines` lines: 16 MiB of newlines are 16 million lines, and
        each line parsed becomes Python objects, so a block is parsed a bounded number of lines at a time."""
        if self.n_lines <= max_lines:
            yield self
            return
        data, start, first = self.data, 0, self.first_line
        while True:
            cut = start - 1
            for _ in range(max_lines):
                cut = data.find(b"\n", cut + 1)
                if cut < 0:
                    break
            if cut < 0:
                yield Block(first, data[start:], data.count(b"\n", start) + 1)
                return
            yield Block(first, data[start:cut], max_lines)
            first, start = first + max_lines, cut + 1


@dataclass
class OversizedLine:
    line: int
    head: bytes
    n_bytes: int


class SourceError(RuntimeError):
    """A source that cannot be read at all."""


def sha256_of(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise SourceError(f"cannot read source {path}: {err.strerror or err}") from err


def _open(path: str) -> tuple[BinaryIO, BinaryIO]:
    """(stream of the decompressed bytes, the raw file, whose position tells progress)."""
    raw = open(path, "rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    raw.seek(0)
    return raw, raw


def read_blocks(path: str, max_line_bytes: int, block_bytes: int = BLOCK_BYTES,
                progress: Callable[[int], None] | None = None) -> Iterator[Block | OversizedLine]:
    """Yield Blocks of whole lines and OversizedLines, in file order; `progress(raw bytes read)`."""
    try:
        stream, raw = _open(path)
    except OSError as err:
        raise SourceError(f"cannot read source {path}: {err.strerror or err}") from err
    # A read never exceeds the line limit, so only a line begun in the carry can be oversized.
    block_bytes = max(1, min(block_bytes, max_line_bytes))
    with stream, raw:
        try:
            yield from _split(stream, max_line_bytes, block_bytes, lambda: progress and progress(raw.tell()))
        except (OSError, EOFError, zlib.error) as err:
            raise SourceError(f"source {path} is corrupt or truncated: {err}") from err


def _split(stream: BinaryIO, max_line_bytes: int, block_bytes: int,
           report: Callable[[], None]) -> Iterator[Block | OversizedLine]:
    # A UTF-8 byte-order mark opening the file marks its encoding; it is not part of line 1.
    line_no, carry = 1, stream.read(len(UTF8_BOM))
    if carry == UTF8_BOM:
        carry = b""
    skipping: OversizedLine | None = None  # inside an oversized line, dropping bytes until its newline
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        report()
        if skipping is not None:
            cut = chunk.find(b"\n")
            if cut < 0:
                skipping.n_bytes += len(chunk)
                continue
            skipping.n_bytes += cut
            yield skipping
            skipping, line_no, chunk = None, line_no + 1, chunk[cut + 1:]
        data = carry + chunk
        first = data.find(b"\n")
        if first > max_line_bytes:
            yield OversizedLine(line_no, data[:RAW_KEEP_BYTES], first)
            line_no, data = line_no + 1, data[first + 1:]
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            whole, carry = data[:cut], data[cut + 1:]
            n_lines = whole.count(b"\n") + 1
            yield Block(line_no, whole, n_lines)
            line_no += n_lines
        if len(carry) > max_line_bytes:
            skipping, carry = OversizedLine(line_no, carry[:RAW_KEEP_BYTES], len(carry)), b""
    if skipping is not None:
        yield skipping
    elif carry:
        yield Block(line_no, carry, 1)


def expand_sources(sources: list) -> list:
    """Files, folders (their *.jsonl / *.jsonl.gz) and glob patterns, sorted; a pattern matching nothing is an error."""
    import glob

    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".json")))
        elif path.exists():
            files.append(path)
        else:
            matched = sorted(Path(p) for p in glob.glob(source))
            if not matched:
                raise FileNotFoundError(f"feedback source {source} matches no file")
            files += matched
    return files
