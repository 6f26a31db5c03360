"""`--scrub-pii` masks what the README says it covers, and leaves what only looks like it; quarantine details
never quote a value.

The tables are the contract: every planted item (phone numbers of the PHONE_REGIONS in national form and of
any country in international form, Unicode and IDN e-mail addresses, each secret shape) is masked and
counted under its kind; every look-alike (dates, times, versions, ids, prices, ISBNs, plain numbers) is
kept as it was, so the scrubber does not destroy training text. Both ingest paths mask identically.
"""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pytest

from ingest.intake.formats.options import FormatOptions
from ingest.intake.job import IngestConfig, ingest
from ingest.lake import feedback_dataset, quarantine_table
from ingest.privacy import EMAIL_MASK, PHONE_MASK, SECRET_MASK, scrub_array_counted, scrub_text, scrub_text_counted

PLANTED = [  # (text with one item, kind)
    ("call me on 020 7946 0958 tonight", "phone"),  # UK national
    ("my mobile is 07700 900123", "phone"),  # UK mobile
    ("UK office +44 20 7946 0958", "phone"),
    ("from abroad dial 0044 20 7946 0958", "phone"),
    ("appelez le 01 23 45 67 89", "phone"),  # FR
    ("portable 06 12 34 56 78 merci", "phone"),
    ("Paris +33 1 23 45 67 89", "phone"),
    ("phone 098765 43210 please", "phone"),  # IN with trunk 0
    ("WhatsApp 98765 43210", "phone"),  # IN mobile
    ("mobile 9876543210", "phone"),  # IN mobile, ungrouped
    ("+91 98765 43210", "phone"),
    ("Zürich 044 668 18 00", "phone"),  # CH
    ("+41 44 668 18 00", "phone"),
    ("Berlin 030 1234567", "phone"),  # DE
    ("Handy 0176 36000000", "phone"),
    ("+49 30 1234567", "phone"),
    ("call (415) 555-2671 now", "phone"),  # US
    ("415-555-2671", "phone"),
    ("+1 415 555 2671", "phone"),
    ("dial 011 44 20 7946 0958 from the US", "phone"),
    ("東京 03-1234-5678 まで", "phone"),  # JP
    ("携帯 090-1234-5678", "phone"),
    ("full width ０３－１２３４－５６７８", "phone"),
    ("+81 3-1234-5678", "phone"),
    ("Sydney +61 2 9374 4000", "phone"),  # international form of a country outside PHONE_REGIONS
    ("Moscow +7 495 123-45-67", "phone"),
    ("mail JÖRG@münchen.de now", "email"),
    ("write to bob.jones+tag@example.co.uk.", "email"),
    ("ünïcödé.user@exämple.org", "email"),
    ("用户@例子.广告", "email"),
    ("δοκιμή@παράδειγμα.δοκιμή", "email"),
    ("punycode ops@xn--mnchen-3ya.de", "email"),
    ("key sk-proj-AbCdEf0123456789ghIJklMNopQRstuVWxyz_0123-abcd", "secret"),
    ("OPENAI_API_KEY sk-AbCdEf0123456789ghIJklMNopQRstuVWxyz", "secret"),
    ("sk-ant-api03-AbCdEf0123456789ghIJklMNopQRstuVWxyz-0123456789", "secret"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "secret"),
    ("token ghp_1234567890abcdefghijklmnopqrstuvwxyzAB", "secret"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV", "secret"),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "secret"),
    ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "secret"),
    ("Authorization: Bearer abcdef0123456789ABCDEF.ghij", "secret"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "secret"),
    ("api_key=9f86d081884c7d659a2feaa0c55ad015", "secret"),
    ("token: 'dGhpcyBpcyBhIHNlY3JldCB0b2tlbjEyMw=='", "secret"),
    ("password=hunter2!", "secret"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "secret"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "secret"),
]
LOOK_ALIKES = [
    "on 2026-12-07 at 14:30", "07.12.2026", "12/07/2026", "2026-12-07T14:30:00Z", "version 3.11.4", "10.0.19045.2965",
    "order 2026-12-07-0042", "order id 2026-12-07", "price $1,234.56", "€ 1.299,00", "costs 1 299 000 EUR",
    "ISBN 978-3-16-148410-0", "ISBN 0-306-40615-2", "population 8,336,817", "12345678 bytes", "in 1997 and 2003",
    "pi 3.14159265358979", "48.8566, 2.3522", "123e4567-e89b-12d3-a456-426614174000", "192.168.100.200",
    "ts 1763600000", "1763600000000 ms", "order #20261207", "invoice 4711-0815-42", "1,000,000 tokens", "call 911",
    "room 1204 floor 12", "ratio 16:9 at 1920x1080", "icon@2x.png", "@alice said hi", "user@localhost",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "primary key = customer_id",
    "the password is long", "use scikit-learn (sk-learn) 1.5.2", "monkey business", "keyboard shortcuts",
    "Bearer of bad news", "between 10:00-12:00 and 14:00-18:00", "1.2.3.4.5.6.7", "+1 more vote",
    "lat 51.5074 lon -0.1278",
    "2 000 000 000 000",
]


MASK = {"phone": PHONE_MASK, "email": EMAIL_MASK, "secret": SECRET_MASK}


@pytest.mark.parametrize("text,kind", PLANTED, ids=[t[:30] for t, _ in PLANTED])
def test_every_planted_item_is_masked_and_counted_as_its_kind(text, kind):
    out, counts = scrub_text_counted(text)
    expected = tuple(int(kind == k) for k in ("phone", "email", "secret"))
    assert (counts.phones, counts.emails, counts.secrets) == expected
    assert MASK[kind] in out
    assert scrub_text(text) == (out, counts.emails, counts.phones)  # the two-count form masks the same


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_left_as_they_are(text):
    assert scrub_text_counted(text)[0] == text


def test_the_arrow_path_masks_exactly_as_the_per_line_path():
    texts = [t for t, _ in PLANTED] + LOOK_ALIKES + [None, "", "two: +44 20 7946 0958 and bob@example.com"]
    masked, counts = scrub_array_counted(pa.array(texts, pa.string()))
    expected = [scrub_text_counted(t) if t is not None else (None, None) for t in texts]
    assert masked.to_pylist() == [out for out, _ in expected]
    assert counts.phones == sum(c.phones for _, c in expected if c) == 27
    assert (counts.emails, counts.secrets) == (7, 15)


def _event(i, text):
    return {"event_id": f"e{i}", "timestamp": "2026-11-20T03:00:00Z", "prompt": [{"role": "user", "content": text}],
            "completion": f"about {text}", "label": "up"}


@pytest.mark.parametrize("vectorized", [True, False])
def test_ingest_masks_every_planted_item_in_the_lake(tmp_path, vectorized):
    source = tmp_path / "planted.jsonl"
    items = PLANTED + [(t, None) for t in LOOK_ALIKES]
    source.write_text("\n".join(json.dumps(_event(i, t), ensure_ascii=False)
                                 for i, (t, _) in enumerate(items)) + "\n")
    summary = ingest([source], tmp_path / "lake", IngestConfig(insecure_dev_key=True, scrub_pii=True,
                                                               vectorized=vectorized), progress=False)
    assert summary.total("accepted") == len(items)
    n = {k: sum(kind == k for _, kind in PLANTED) for k in MASK}
    assert (summary.total("emails_masked"), summary.total("phones_masked"), summary.total("secrets_masked")) == (
        2 * n["email"], 2 * n["phone"], 2 * n["secret"])
    assert f"{2 * n['secret']:,} secret(s)" in summary.render()
    rows = {r["event_id"]: r for r in feedback_dataset(tmp_path / "lake").to_table().to_pylist()}
    for i, (text, kind) in enumerate(items):
        prompt, completion = rows[f"e{i}"]["prompt"][0]["content"], rows[f"e{i}"]["completion"]
        if kind is None:
            assert (prompt, completion) == (text, f"about {text}")
        else:
            assert MASK[kind] in prompt and MASK[kind] in completion, (text, prompt)


# -- quarantine details -----------------------------------------------------------------------------------

HOSTILE = {"email": "jörg.secret@münchen.de", "phone": "+44 20 7946 0958",
           "key": "sk-proj-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0"}
T0 = "2026-11-20T03:00:00+00:00"
NS0 = 1_763_600_000_000_000_000


def _attrs(**named):
    return [{"key": k.replace("__", "."), "value": v} for k, v in named.items()]


def _otel_eval(h, **override):
    attrs = dict(gen_ai__evaluation__name={"stringValue": "thumbs"},
                 gen_ai__evaluation__score__label={"stringValue": "up"})
    attrs.update(override.pop("attrs", {}))
    log = {"timeUnixNano": str(NS0), "eventName": "gen_ai.evaluation.result", "spanId": "ab",
           "attributes": _attrs(**attrs)}
    log.update(override)
    return log


def hostile_records(fmt: str, h: str) -> list:
    """Records of `fmt` that are each refused for a field holding the hostile value `h`."""
    base = {"event_id": "e", "timestamp": T0, "prompt": "q", "completion": "a", "label": "up"}
    score = {"id": "s", "traceId": "t", "name": "thumbs", "timestamp": T0}
    completion = {"object": "chat.completion", "id": "c", "created": 1_763_600_000, "model": "m",
                  "request": {"messages": [{"role": "user", "content": "q"}]},
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}}],
                  "metadata": {"thumbs": "up"}}
    return {
        "events": [{**base, "label": h}, {**base, "timestamp": h}, {**base, "prompt": [{"role": h, "content": "x"}]},
                   {**base, "label": [h]}, json.dumps({**base, "label": h}, ensure_ascii=False)[:-3]],
        "pairs": [{"prompt": "q", "chosen": "a", "rejected": "b", "timestamp": h}],
        "hh": [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b",
                "timestamp": h}],
        "trl-kto": [{"prompt": "q", "completion": "a", "label": h}],
        "langfuse": [{**score, "dataType": "BOOLEAN", "value": h},
                     {**score, "dataType": "CATEGORICAL", "stringValue": h},
                     {**score, "dataType": h, "value": 1}, {**score, "dataType": "NUMERIC", "value": h},
                     {**score, "dataType": "BOOLEAN", "value": 1, "observationId": h}],
        "langsmith": [{"id": "f", "run_id": "r", "key": "thumbs", "score": h, "created_at": T0},
                      {"id": "g", "run_id": h, "key": "thumbs", "score": 1, "created_at": T0}],
        "otel-genai": [_otel_eval(h, attrs={"gen_ai__evaluation__score__label": {"stringValue": h}}),
                       _otel_eval(h, timeUnixNano=h),
                       _otel_eval(h, attrs={"gen_ai__evaluation__score__value": {"intValue": h}}),
                       _otel_eval(h, attrs={"gen_ai__response__id": {"stringValue": h}})],
        "openai": [{**completion, "metadata": {"thumbs": h}}, {**completion, "created": h}],
    }[fmt]


FORMATS = ["events", "pairs", "hh", "trl-kto", "langfuse", "langsmith", "otel-genai", "openai"]


@pytest.mark.parametrize("scrub_pii", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_quarantine_details_name_the_field_never_its_value(tmp_path, fmt, scrub_pii):
    for kind, h in HOSTILE.items():
        records = hostile_records(fmt, h)
        source = tmp_path / f"{kind}.jsonl"
        source.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
                                     for r in records) + "\n")
        lake = tmp_path / f"lake-{kind}"
        config = IngestConfig(format=fmt, insecure_dev_key=True, scrub_pii=scrub_pii, formats=FormatOptions(),
                              default_timestamp=datetime.fromisoformat(T0))
        summary = ingest([source], lake, config, progress=False)
        table = quarantine_table(lake)
        assert table.num_rows == len(records) == sum(summary.quarantined.values()), (kind, summary.quarantined)
        for detail in table.column("detail").to_pylist():
            for part in (h, h[:12], h[-10:], "münchen", "7946", "Zz9Yy8"):
                assert part not in detail, (kind, detail)


def test_a_repeated_event_id_is_not_quoted_in_its_detail(tmp_path):
    h = HOSTILE["email"]
    source = tmp_path / "dupe.jsonl"
    record = {"event_id": h, "timestamp": T0, "prompt": "q", "completion": "a", "label": "up"}
    source.write_text("\n".join(json.dumps(record, ensure_ascii=False) for _ in range(2)) + "\n")
    ingest([source], tmp_path / "lake", IngestConfig(insecure_dev_key=True), progress=False)
    detail, = quarantine_table(tmp_path / "lake").column("detail").to_pylist()
    assert "münchen" not in detail, detail
