"""Condition keys: the one place that decides when two condition phrases are "the same".

"Acute-On-Chronic Liver Failure", "acute on chronic liver failure" and "ACUTE\u2011ON\u2011CHRONIC  LIVER FAILURE"
(non-breaking hyphens U+2011, double space) all have the key ``acute on chronic liver failure``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

MAX_CONDITION_LENGTH = 300
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


# Pure, and asked for the same MeSH terms and condition names over and over (every record of every pass).
@lru_cache(maxsize=4096)
def condition_key(phrase: str) -> str:
    """Case, accents, punctuation, hyphens and whitespace do not distinguish conditions."""
    text = unicodedata.normalize("NFKD", phrase)
    # Drop combining marks (é -> e) so the same word typed with or without accents matches.
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())[:MAX_CONDITION_LENGTH]


def condition_keys(phrases: Iterable[str]) -> list[str]:
    """Distinct, non-empty keys in first-seen order."""
    seen: dict[str, None] = {}
    for phrase in phrases:
        key = condition_key(phrase)
        if key:
            seen.setdefault(key, None)
    return list(seen)
