"""Pseudonymise user ids with a keyed hash, and mask e-mail addresses, phone numbers and secrets in texts.

The same key gives the same pseudonym, so a user's votes still group together downstream, but the
raw id never reaches Parquet or a log.

`--scrub-pii` masks, in this order (what one mask took is not looked at again by the next):

- secrets, as `[SECRET]`: OpenAI (`sk-…`, `sk-proj-…`), Anthropic (`sk-ant-…`), Stripe (`sk_live_…`),
  AWS access key ids (`AKIA…`, `ASIA…`), GitHub (`ghp_…`, `gho_…`, `ghs_…`, `github_pat_…`), Slack
  (`xox[abpors]-…`), Google (`AIza…`), JWTs (`eyJ….eyJ….…`), PEM private-key blocks, the token after
  `Bearer `, and the value after a `key`/`token`/`secret`/`password` name and `=` or `:` (16+ characters
  with a digit; for passwords 6+ characters with a digit or symbol). The name and `Bearer ` stay.
- e-mail addresses, as `[EMAIL]`: a Unicode local part (letters of any script, digits, `.!#$%&*+^_~-`),
  `@`, and a domain of Unicode or punycode labels ending in a 2+ letter top-level domain (`JÖRG@münchen.de`).
  Quoted local parts, IP-literal domains and dotless hosts (`user@localhost`) are not caught; nor are
  `name@2x.png`-style file names, which are not addresses.
- phone numbers, as `[PHONE]`, found by libphonenumber (`phonenumbers`): every number written with `+` and
  its country code, of any country, whose length is possible there (`+44 20 7946 0958`, `+1 (555) 555-5555`);
  numbers dialled with an exit code (`0044 …`, `011 …`) and national forms of PHONE_REGIONS (`020 7946 0958`,
  `01 23 45 67 89`, `(415) 555-2671`, `03-1234-5678`, `98765 43210`) when valid and grouped as that
  country writes them (libphonenumber's STRICT_GROUPING).
  A bare run of digits with no `+`, trunk `0` or grouping counts only as a mobile number (so Unix
  timestamps and order numbers stay). Numbers of other countries written nationally are not caught.

Only texts a cheap pattern flags (an `@`, 7+ digits in a phone-like run, a secret's prefix or name) are
looked at further; both ingest paths (`scrub_text` per line, `scrub_array` on Arrow columns) run the same
Python code on those, so they mask identically.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sys
from dataclasses import dataclass

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

KEY_ENV = "THUMBS_PSEUDONYM_KEY"
# Public on purpose: pseudonyms made with it protect nothing. Only for demos and tests.
INSECURE_DEV_KEY = "thumbs-insecure-dev-key"

EMAIL_MASK = "[EMAIL]"
PHONE_MASK = "[PHONE]"
SECRET_MASK = "[SECRET]"
PHONE_REGIONS = ("US", "GB", "FR", "DE", "CH", "IN", "JP")
"""Countries whose numbers are caught in national form too (international forms are caught for all)."""

_DIGIT = "[0-9\uff10-\uff19]"  # ASCII and full-width digits, spelled out so RE2 and Python read it alike
_SEP = "[ \t\u00a0\u2010-\u2015\u30fc\uff0d./()\uff08\uff09-]"
# The prefilter, one pattern for Python's re and Arrow's RE2 (no \d, \s or \w: their meanings differ).
CANDIDATE_PATTERN = (
    "@|" + _DIGIT + "(?:" + _SEP + "{0,3}" + _DIGIT + "){6}"
    + "|sk-|sk_|[rp]k_live|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abposr]-|AIza|eyJ|PRIVATE KEY"
    + "|(?i:bearer|key|token|secret|passw|pwd)")
_CANDIDATE = re.compile(CANDIDATE_PATTERN)
_PHONE_SPAN = re.compile("[+\uff0b(\uff08]?" + _DIGIT + "(?:" + _SEP + "{0,3}" + _DIGIT + "){6,}")

# Each secret pattern has two groups: what stays (maybe empty), then the secret.
_SECRET_PATTERNS = [
    r"()-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"()\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
    r"()\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    r"()\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    r"()\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    r"()\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    r"()\bAIza[0-9A-Za-z_\-]{35}",
    r"()\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
    r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{16,}=*",
    r"(?i)(\b[a-z0-9_\-]*(?:key|token|secret)[\"']?\s*[:=]\s*[\"']?)(?=[A-Za-z_\-+/=.]*[0-9])[A-Za-z0-9_\-+/=.]{16,}",
    r"(?i)(\b(?:password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?)(?=\S*[0-9!#$%&*?@^~])[^\s\"',;]{6,}",
]
_SECRETS = [re.compile(p) for p in _SECRET_PATTERNS]
_EMAIL = re.compile(
    r"[\w.!#$%&*+^~\-]+@(?:[^\W_](?:[\w\-]*[^\W_])?\.)+(?!(?:png|jpe?g|gif|svg|webp|pdf)\b)"
    r"(?:[^\W\d_]{2,}|xn--[a-z0-9\-]+)\b")
# Dates, and bare digit runs that cannot be a 10-digit US or Indian mobile (the only bare runs counted).
_NOT_A_PHONE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}[./][0-9]{1,2}[./][0-9]{2,4}"
                          r"|[1-9][0-9]{0,8}|[1-9][0-9]{10,}")
_MOBILE = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
_NATIONAL_REGIONS = tuple(r for r in PHONE_REGIONS if r != "US")  # the ones with a trunk prefix 0
_FULL_WIDTH = str.maketrans("\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19\uff0b\uff08",
                            "0123456789+(")


class MissingKeyError(RuntimeError):
    pass


def resolve_key(config_key: str | None, insecure_dev_key: bool) -> bytes:
    """The pseudonym key: THUMBS_PSEUDONYM_KEY, else the config's, else the dev key if allowed."""
    key = os.environ.get(KEY_ENV) or config_key
    if key:
        return key.encode("utf-8")
    if insecure_dev_key:
        print(f"warning: pseudonymising user ids with the public dev key; set {KEY_ENV} in production",
              file=sys.stderr)
        return INSECURE_DEV_KEY.encode("utf-8")
    raise MissingKeyError(
        f"no pseudonym key: set {KEY_ENV} to a secret, "
        "or pass --insecure-dev-key for a demo or a test"
    )


class Pseudonymizer:
    """HMAC-SHA256 of a user id, hex, truncated to 128 bits; memoised since users repeat."""

    def __init__(self, key: bytes):
        self._key = key
        self._cache: dict[str, str] = {}

    def __call__(self, user_id: str) -> str:
        out = self._cache.get(user_id)
        if out is None:
            out = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
            if len(self._cache) < 1_000_000:
                self._cache[user_id] = out
        return out

    def array(self, ids: pa.Array) -> pa.Array:
        """Vectorised: hash each distinct id once, then gather."""
        encoded = pc.dictionary_encode(ids).combine_chunks() if isinstance(ids, pa.ChunkedArray) \
            else pc.dictionary_encode(ids)
        hashed = pa.array([self(u) for u in encoded.dictionary.to_pylist()], pa.string())
        return hashed.take(encoded.indices)


@dataclass
class PiiCounts:
    """How many of each kind `--scrub-pii` masked."""

    emails: int = 0
    phones: int = 0
    secrets: int = 0

    def add(self, other: PiiCounts) -> None:
        self.emails += other.emails
        self.phones += other.phones
        self.secrets += other.secrets


def _regions(span: str) -> tuple[str, ...]:
    """Where a phone-like span can be a number: its form says which countries' rules to try."""
    head = span.lstrip("(").translate(_FULL_WIDTH)
    if head.startswith("+"):
        return ("ZZ",)  # the country code is in the number
    if head.startswith(("00", "011")):
        return ("GB" if head.startswith("00") else "US",)  # dialled from abroad: the IDD names the country
    return _NATIONAL_REGIONS if head.startswith("0") else ("US", "IN")


def _phone_ranges(span: str) -> list[tuple[int, int]]:
    if _NOT_A_PHONE.fullmatch(span):  # what the matcher would refuse anyway, without its cost (~50 us a region)
        return []
    found: dict[int, int] = {}
    for region in _regions(span):
        # With its country code written out a number is meant as one: any possible length will do.
        leniency = phonenumbers.Leniency.POSSIBLE if region == "ZZ" else phonenumbers.Leniency.STRICT_GROUPING
        for match in phonenumbers.PhoneNumberMatcher(span, region, leniency=leniency):
            raw = match.raw_string
            # An ungrouped digit run without + or trunk 0 is more often an id or a timestamp than a landline.
            if raw.isdigit() and not raw.startswith("0") and phonenumbers.number_type(match.number) not in _MOBILE:
                continue
            found[match.start] = max(found.get(match.start, 0), match.end)
    return sorted(found.items())


def _mask_phones(text: str) -> tuple[str, int]:
    out, at, n = [], 0, 0
    for span in _PHONE_SPAN.finditer(text):
        for start, end in _phone_ranges(span.group()):
            start, end = span.start() + start, span.start() + end
            if start >= at:
                out += [text[at:start], PHONE_MASK]
                at, n = end, n + 1
    return "".join(out) + text[at:], n


def _mask_secrets(text: str) -> tuple[str, int]:
    total = 0
    for pattern in _SECRETS:
        text, n = pattern.subn(lambda m: m.group(1) + SECRET_MASK, text)
        total += n
    return text, total


def scrub_text_counted(text: str) -> tuple[str, PiiCounts]:
    """(text with secrets, e-mails and phone numbers masked, how many of each)."""
    counts = PiiCounts()
    if _CANDIDATE.search(text) is None:
        return text, counts
    text, counts.secrets = _mask_secrets(text)
    text, counts.emails = _EMAIL.subn(EMAIL_MASK, text)
    text, counts.phones = _mask_phones(text)
    return text, counts


class Scrubber:
    """`scrub(text) -> text` that adds what it masked to `.counts`; `take()` hands the counts over and starts
    again (a source's summary takes them as it goes)."""

    def __init__(self) -> None:
        self.counts = PiiCounts()

    def __call__(self, text: str) -> str:
        text, counts = scrub_text_counted(text)
        self.counts.add(counts)
        return text

    def take(self) -> PiiCounts:
        counts, self.counts = self.counts, PiiCounts()
        return counts


def scrub_text(text: str) -> tuple[str, int, int]:
    """(text with secrets, e-mails and phone numbers masked, e-mails masked, phones masked).
    Secrets are masked too; `scrub_text_counted` also says how many."""
    text, counts = scrub_text_counted(text)
    return text, counts.emails, counts.phones


def scrub_array_counted(texts: pa.Array) -> tuple[pa.Array, PiiCounts]:
    """`scrub_text_counted` over a string array: only the strings the prefilter flags leave Arrow."""
    counts = PiiCounts()
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    flagged = pc.fill_null(pc.match_substring_regex(texts, CANDIDATE_PATTERN), False)
    if not pc.any(flagged).as_py():
        return texts, counts
    scrubbed = []
    for text in pc.filter(texts, flagged).to_pylist():
        text, n = scrub_text_counted(text)
        scrubbed.append(text)
        counts.add(n)
    return pc.replace_with_mask(texts, flagged, pa.array(scrubbed, texts.type)), counts


def scrub_array(texts: pa.Array) -> tuple[pa.Array, int, int]:
    """The same as `scrub_text`, over a string array."""
    texts, counts = scrub_array_counted(texts)
    return texts, counts.emails, counts.phones
