"""Ingest throughput against the floor: the same events read by raw Arrow and written as Parquet.

    python benchmarks/ingest.py [--events 1000000] [--format events|langfuse|otel-logs] [--record]

The floor is `pyarrow.json.read_json` + `pyarrow.parquet.write_table` (zstd) on the same file: no
validation, no labels, no pseudonyms, no partitions. thumbs does all of that on top (and hashes the
source for idempotency). Both run in this one process, one after the other, on the same file;
`--record` appends the table to BENCHMARKS.md. `--format langfuse` measures a nested foreign format
instead: one Langfuse trace per line with its GENERATION observation and its thumbs score nested, the
same texts; the floor is the same bare Arrow read + Parquet write of that file. `--format otel-logs`: the
OpenTelemetry openai-v2 instrumentation's default mode (content in log records joined to content-less spans by
span id), 100 calls per OTLP export request line, read as `--format otel-genai`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.json as pj
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import record, timing_table  # noqa: E402
from ingest.intake.formats.otlp import any_value  # noqa: E402
from ingest.intake.job import IngestConfig, ingest  # noqa: E402

WORDS = ("the a model answer user please explain how why what code python data error help thanks "
         "good bad fine sorry could would maybe list table function return value").split()


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Events shaped like real chat feedback: 1-3 turn prompts, 10-120 word answers, 3 days, 50k users."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            turns = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))}]
            if rng.random() < 0.3:
                turns = [{"role": "system", "content": "You are a helpful assistant."}] + turns
            f.write(json.dumps({
                "event_id": f"e-{i}", "timestamp": f"2026-11-{rng.randint(18, 20)}T{rng.randint(0, 23):02d}:"
                                                   f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
                "user_id": f"u-{rng.randint(0, 50_000)}", "conversation_id": f"c-{i // 3}",
                "model_version": "prod-v3", "prompt": turns,
                "completion": " ".join(rng.choices(WORDS, k=rng.randint(10, 120))),
                "label": "up" if rng.random() < 0.3 else "down",
            }) + "\n")


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


def generate_langfuse(path: Path, n: int, seed: int = 0) -> None:
    """The same feedback as `generate`, exported from Langfuse: a trace per line, observation and score nested."""
    rng = random.Random(seed)
    kinds = ("BOOLEAN", "NUMERIC", "CATEGORICAL")
    with open(path, "w") as f:
        for i in range(n):
            turns = [{"role": "user", "content": _text(rng, 5, 40)}]
            if rng.random() < 0.3:
                turns = [{"role": "system", "content": "You are a helpful assistant."}] + turns
            day, hour, minute = rng.randint(18, 20), rng.randint(0, 23), rng.randint(0, 59)
            start = f"2026-11-{day}T{hour:02d}:{minute:02d}:00.000Z"
            up, kind = rng.random() < 0.3, kinds[i % 3]
            value = {"BOOLEAN": 1 if up else 0, "NUMERIC": 1 if up else -1, "CATEGORICAL": None}[kind]
            f.write(json.dumps({
                "id": f"t-{i}", "name": "chat", "timestamp": start, "userId": f"u-{rng.randint(0, 50_000)}",
                "sessionId": f"c-{i // 3}", "release": "prod-v3", "version": None, "input": turns, "output": None,
                "observations": [{
                    "id": f"o-{i}", "traceId": f"t-{i}", "type": "GENERATION", "name": "chat", "startTime": start,
                    "model": "prod-v3", "input": turns,
                    "output": {"role": "assistant", "content": _text(rng, 10, 120)}}],
                "scores": [{"id": f"s-{i}", "traceId": f"t-{i}", "observationId": f"o-{i}", "name": "thumbs",
                            "dataType": kind, "value": value,
                            "stringValue": ("up" if up else "down") if kind == "CATEGORICAL" else None,
                            "source": "API", "timestamp": start}],
            }) + "\n")


def _kv(attributes: dict) -> list:
    return [{"key": k, "value": any_value(v)} for k, v in attributes.items() if v is not None]


def generate_otel_logs(path: Path, n: int, seed: int = 0, per_line: int = 100) -> None:
    """The same feedback as `generate`, from OpenTelemetry's openai-v2 instrumentation in its default mode: a
    content-less span per call, the call's `gen_ai.{role}.message` and `gen_ai.choice` log records, and the app's
    thumbs as a `gen_ai.evaluation.result` log record in the call's span context; OTLP/JSON export requests of
    `per_line` calls each (a logs line, then its spans line), as the Collector's file exporter writes them."""
    rng = random.Random(seed)
    ns0 = 1_763_600_000_000_000_000
    resource = {"attributes": _kv({"service.name": "chat-app"})}
    scope = {"name": "opentelemetry.instrumentation.openai_v2"}
    with open(path, "w") as f:
        for first in range(0, n, per_line):
            records, spans = [], []
            for k in range(first, min(first + per_line, n)):
                ids = {"traceId": f"{k:032x}", "spanId": f"{k:016x}", "flags": 1}
                start = ns0 + k * 1_000_000_000
                request = [("user", _text(rng, 5, 40))]
                if rng.random() < 0.3:
                    request = [("system", "You are a helpful assistant.")] + request
                for at, (role, content) in enumerate(request):
                    records.append({"timeUnixNano": str(start + at), "eventName": f"gen_ai.{role}.message", **ids,
                                    "attributes": _kv({"gen_ai.system": "openai"}), "body": any_value({"content": content})})
                records.append({"timeUnixNano": str(start + 5), "eventName": "gen_ai.choice", **ids,
                                "attributes": _kv({"gen_ai.system": "openai"}),
                                "body": any_value({"index": 0, "finish_reason": "stop", "message": {
                                    "role": "assistant", "content": _text(rng, 10, 120)}})})
                records.append({"timeUnixNano": str(start + 60_000_000_000), "eventName": "gen_ai.evaluation.result",
                                **ids, "attributes": _kv({"gen_ai.evaluation.name": "thumbs",
                                                          "gen_ai.evaluation.score.label":
                                                              "thumbs_up" if rng.random() < 0.3 else "thumbs_down"})})
                spans.append({**{k2: v for k2, v in ids.items() if k2 != "flags"}, "name": "chat gpt-4o-mini",
                              "kind": 3, "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 900_000_000),
                              "attributes": _kv({"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                                                 "gen_ai.request.model": "gpt-4o-mini",
                                                 "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                                                 "gen_ai.response.id": f"chatcmpl-{k}",
                                                 "user.id": f"u-{rng.randint(0, 50_000)}"})})
            f.write(json.dumps({"resourceLogs": [{"resource": resource, "scopeLogs": [
                {"scope": scope, "logRecords": records}]}]}) + "\n")
            f.write(json.dumps({"resourceSpans": [{"resource": resource, "scopeSpans": [
                {"scope": scope, "spans": spans}]}]}) + "\n")


GENERATORS = {"events": ("events", generate), "langfuse": ("langfuse", generate_langfuse),
              "otel-logs": ("otel-genai", generate_otel_logs)}  # --format: (thumbs' format, generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--format", choices=sorted(GENERATORS), default="events")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / f"{args.format}.jsonl"
        fmt, generator = GENERATORS[args.format]
        generator(source, args.events)
        size_mb = source.stat().st_size / 1e6

        t0 = time.perf_counter()
        table = pj.read_json(source)
        pq.write_table(table, tmp / "floor.parquet", compression="zstd")
        floor_s = time.perf_counter() - t0
        del table

        t0 = time.perf_counter()
        summary = ingest([source], tmp / "lake", IngestConfig(format=fmt, insecure_dev_key=True),
                         progress=False)
        thumbs_s = time.perf_counter() - t0
        assert summary.total("accepted") == args.events, summary.render()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    what = "validate, pseudonymise, partition" if fmt == "events" else "join, validate, pseudonymise, partition"
    table_md = timing_table(args.events, [("raw floor: read_json + write_table", floor_s),
                                          (f"thumbs ingest --format {fmt} ({what})", thumbs_s)])
    detail = f"{size_mb:,.0f} MB of JSONL ({args.format}), peak RSS {peak_mb:,.0f} MB"
    print(f"{args.events:,} events, {detail}\n{table_md}")
    if args.record:
        record("ingest", f"python benchmarks/ingest.py --events {args.events} --format {args.format}", detail,
               table_md)

if __name__ == "__main__":
    main()
