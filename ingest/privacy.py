"""Pseudonymise user ids with a keyed hash and mask e-mail addresses and phone numbers in texts.

The same key gives the same pseudonym, so a user's votes still group together downstream, but the
raw id never reaches Parquet or a log. Scrubbing uses one pattern for both the per-line path (Python
`re`) and the vectorised path (Arrow's RE2): both engines read these ASCII-only patterns the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sys

import pyarrow as pa
import pyarrow.compute as pc

KEY_ENV = "THUMBS_PSEUDONYM_KEY"
# Public on purpose: pseudonyms made with it protect nothing. Only for demos and tests.
INSECURE_DEV_KEY = "thumbs-insecure-dev-key"

EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
PHONE_PATTERN = r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .\-]?\d{3}[ .\-]?\d{3,4}\b"
EMAIL_MASK = "[EMAIL]"
PHONE_MASK = "[PHONE]"
_EMAIL_RE = re.compile(EMAIL_PATTERN, re.ASCII)
_PHONE_RE = re.compile(PHONE_PATTERN, re.ASCII)


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
        f"no pseudonym key: set {KEY_ENV} (or `pseudonym_key` in the config) to a secret, "
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


def scrub_text(text: str) -> tuple[str, int, int]:
    """(text with e-mails and phone numbers masked, e-mails masked, phones masked)."""
    text, n_email = _EMAIL_RE.subn(EMAIL_MASK, text)
    text, n_phone = _PHONE_RE.subn(PHONE_MASK, text)
    return text, n_email, n_phone


def scrub_array(texts: pa.Array) -> tuple[pa.Array, int, int]:
    """The same as `scrub_text`, over a string array."""
    n_email = pc.sum(pc.count_substring_regex(texts, EMAIL_PATTERN)).as_py() or 0
    texts = pc.replace_substring_regex(texts, EMAIL_PATTERN, EMAIL_MASK)
    n_phone = pc.sum(pc.count_substring_regex(texts, PHONE_PATTERN)).as_py() or 0
    texts = pc.replace_substring_regex(texts, PHONE_PATTERN, PHONE_MASK)
    return texts, n_email, n_phone
