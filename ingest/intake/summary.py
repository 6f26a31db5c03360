"""What `thumbs ingest` reports: one SourceSummary a source (lines, accepted, quarantined by reason, what was
masked), and the run's IngestSummary, rendered for a person or as JSON. Both ingest paths fill them (ingest/intake/job.py,
ingest/intake/formats/batch.py); a source's record in the lake is its summary's fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ingest.privacy import PiiCounts


@dataclass
class SourceSummary:
    source: str
    sha256: str = ""
    status: str = "ingested"  # ingested | skipped | error
    error: str = ""
    lines: int = 0
    accepted: int = 0
    desirable: int = 0
    undesirable: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    emails_masked: int = 0
    phones_masked: int = 0
    secrets_masked: int = 0
    unrated: int = 0  # foreign formats: generations (or completions) no thumbs reached
    ignored: dict[str, int] = field(default_factory=dict)  # foreign formats: scores of other names
    rescued: int = 0  # foreign formats: earlier runs' orphan ratings that became events here
    seconds: float = 0.0

    def add_masked(self, counts: PiiCounts) -> None:
        """What `--scrub-pii` masked in a block or a batch of records."""
        self.emails_masked += counts.emails
        self.phones_masked += counts.phones
        self.secrets_masked += counts.secrets


@dataclass
class IngestSummary:
    lake: str
    sources: list[SourceSummary]
    seconds: float

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.sources)

    @property
    def quarantined(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sources:
            for reason, n in s.quarantined.items():
                out[reason] = out.get(reason, 0) + n
        return dict(sorted(out.items()))

    @property
    def failed(self) -> list[SourceSummary]:
        return [s for s in self.sources if s.status == "error"]

    def to_dict(self) -> dict:
        by_status = {k: sum(s.status == k for s in self.sources) for k in ("ingested", "skipped", "error")}
        return {
            "lake": self.lake,
            "sources_read": by_status["ingested"], "sources_skipped": by_status["skipped"],
            "sources_failed": by_status["error"],
            "lines": self.total("lines"), "accepted": self.total("accepted"),
            "desirable": self.total("desirable"), "undesirable": self.total("undesirable"),
            "quarantined": self.quarantined, "quarantined_total": sum(self.quarantined.values()),
            "partitions": sorted({p for s in self.sources for p in s.partitions}),
            "emails_masked": self.total("emails_masked"), "phones_masked": self.total("phones_masked"),
            "secrets_masked": self.total("secrets_masked"),
            "unrated": self.total("unrated"), "rescued": self.total("rescued"),
            "ignored": {k: sum(s.ignored.get(k, 0) for s in self.sources)
                        for k in sorted({k for s in self.sources for k in s.ignored})},
            "seconds": round(self.seconds, 3),
            "sources": [asdict(s) for s in self.sources],
        }

    def render(self) -> str:
        d = self.to_dict()
        lines = [f"ingest into {self.lake}: {d['sources_read']} source(s) read, {d['sources_skipped']} skipped "
                 f"(already ingested), {d['sources_failed']} failed, in {self.seconds:.1f}s"]
        for s in self.sources:
            if s.status == "ingested":
                lines.append(f"  {s.source}: {s.lines:,} lines -> {s.accepted:,} accepted "
                             f"({s.desirable:,} up / {s.undesirable:,} down), "
                             f"{sum(s.quarantined.values()):,} quarantined, {len(s.partitions)} partition(s)")
            elif s.status == "skipped":
                lines.append(f"  {s.source}: skipped, already ingested (sha256 {s.sha256[:12]})")
            else:
                lines.append(f"  {s.source}: FAILED: {s.error}")
        for reason, n in d["quarantined"].items():
            lines.append(f"  quarantined {reason}: {n:,}")
        if d["ignored"]:
            lines.append("  ignored scores of other names: " + ", ".join(f"{k} {n:,}" for k, n in d["ignored"].items()))
        if d["unrated"] or d["rescued"]:
            lines.append(f"  {d['unrated']:,} generation(s) without a thumbs; {d['rescued']:,} earlier orphan "
                         "rating(s) rescued")
        if d["emails_masked"] or d["phones_masked"] or d["secrets_masked"]:
            lines.append(f"  masked {d['emails_masked']:,} e-mail(s), {d['phones_masked']:,} phone number(s), "
                         f"{d['secrets_masked']:,} secret(s)")
        return "\n".join(lines)
