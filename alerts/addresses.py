"""Email addresses: normalization, and the keyed hash used wherever we must not keep the address."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    pass


def normalize_email(raw: str) -> str:
    """Syntax check only (no DNS), then one canonical spelling so one person is one subscriber."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    # Mailbox names are case-insensitive at every provider that matters; treat them so.
    return result.normalized.lower()


@dataclass(frozen=True)
class AddressHasher:
    key: str

    def __call__(self, normalized_email: str) -> str:
        digest = hmac.new(self.key.encode(), normalized_email.encode(), hashlib.sha256)
        return digest.hexdigest()
