"""What a visitor may sign up for from the web, and what we call it.

A trial by its NCT ID. A condition only when the vocabulary vouches for it (``alerts.vocabulary.vouch``:
registry records used the phrase), followed under the vocabulary's own words: a stranger's text never
reaches an email we send. A phrase the vocabulary does not know gets suggestions from it instead.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from alerts import vocabulary
from alerts.conditions import condition_key
from alerts.models import SubscriptionKind
from alerts.subscriptions import Target

MAX_SUGGESTIONS = 5
MAX_WORDS = 8
UNKNOWN_CONDITION = (
    "We don't know this condition from the studies we follow. Choose one of the suggestions, or try other words."
)


def condition(session: Session, phrase: str) -> Target | None:
    """The target a web sign-up for ``phrase`` follows, named in the vocabulary's words; None if unknown."""
    vouched = vocabulary.vouch(session, phrase)
    if vouched is None:
        return None
    # Followed by its phrase: what the phrase means is re-resolved as records teach it (alerts.vocabulary).
    return Target(SubscriptionKind.CONDITION, vouched.key, vouched.name)


def suggestions(session: Session, phrase: str, limit: int = MAX_SUGGESTIONS) -> list[vocabulary.Suggestion]:
    """Known conditions close to ``phrase``: by its beginning, else by its words (a typo elsewhere)."""
    found = vocabulary.suggest(session, phrase, limit)
    if found:
        return found
    # The first few distinct words long enough to mean something: one query each, on this error path only.
    words = list(dict.fromkeys(w for w in condition_key(phrase).split() if len(w) >= 4))[:MAX_WORDS]
    merged: dict[str, vocabulary.Suggestion] = {}
    for word in words:
        for item in vocabulary.suggest(session, word, limit):
            merged.setdefault(item.concept or item.key, item)
    return sorted(merged.values(), key=lambda s: (-s.trials, s.label.casefold()))[:limit]


def shown_name(item: vocabulary.Suggestion) -> str:
    """A suggestion as the form offers it: the words a sign-up for it will be named by."""
    return item.term or item.label
