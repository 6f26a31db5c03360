"""The cross-source join: generations indexed by their keys, ratings looked up in the line, then the run.

A rating is resolved against the generations of its own line first (a Langfuse trace with its
observations and scores, an OTLP batch with its spans), then, once every source of the run has been
read, against all of them (scores exported in another file). A key names one generation; a trace-level
key (`trace:<id>` in Langfuse, `run:<trace id>` in LangSmith) names the trace's own output when it has
one, else its latest generation (`rank`: the generation's start time).

Memory: every generation of the run stays indexed until the run ends (about its JSON size each), since a
score in a later file may still name it. Split a very large export into several runs by day.
"""

from __future__ import annotations

from ingest.intake.formats.base import Generation


_STRONG = "~"  # sorts after every "0"-prefixed weak rank


class Index:
    """Generations by key. A key's own generation beats any that answers for it weakly; of those, the
    highest rank (latest start) wins, the later one on a tie."""

    def __init__(self):
        self._by_key: dict[str, tuple[str, Generation]] = {}
        self.traces: dict[str, tuple] = {}  # Langfuse trace id -> (userId, sessionId)

    def add(self, gen: Generation) -> None:
        for key in gen.keys:
            self._by_key[key] = (_STRONG, gen)
        if gen.weak is not None:
            rank = "0" + gen.rank
            current = self._by_key.get(gen.weak)
            if current is None or rank >= current[0]:
                self._by_key[gen.weak] = (rank, gen)

    def get(self, key: str) -> Generation | None:
        found = self._by_key.get(key)
        return found[1] if found is not None else None

    def values(self) -> list[Generation]:
        return [gen for _, gen in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)


def fill_from_trace(gen: Generation, traces: dict[str, tuple]) -> Generation:
    """A Langfuse observation carries no user or session: its trace does (maybe in another line)."""
    if gen.trace is None or (gen.user_id is not None and gen.conversation_id is not None):
        return gen
    user, session = traces.get(gen.trace, (None, None))
    if gen.user_id is None:
        gen.user_id = user
    if gen.conversation_id is None:
        gen.conversation_id = session
    return gen
