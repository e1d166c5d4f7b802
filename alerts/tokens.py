"""Signed, purpose-bound link tokens (itsdangerous). Tokens carry ids, never an address.

Each purpose has its own salt, so a confirm token cannot be used to unsubscribe and vice versa.
Confirm tokens expire (the subscriber can ask for a new one); unsubscribe and manage tokens must keep
working in emails read years later, so they carry no timestamp and are signed once and stored.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    MANAGE = "manage"
    # A digest's one-click link: ends every subscription whose items that digest carried (alerts.digests).
    DIGEST = "digest"


class TokenError(Exception):
    """The token cannot be used; ``reason`` is one of ``invalid`` or ``expired``."""

    def __init__(self, reason: str, payload_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # For an expired confirm token the signature is still genuine, so we can offer a resend.
        self.payload_id = payload_id


@functools.lru_cache(maxsize=32)
def _serializer(keys: tuple[str, ...], salt: str, timed: bool) -> URLSafeSerializer | URLSafeTimedSerializer:
    if timed:
        return URLSafeTimedSerializer(list(keys), salt=salt)
    return URLSafeSerializer(list(keys), salt=salt)


@dataclass(frozen=True)
class Signer:
    secret_key: str
    # Older keys still verify after a rotation, so links already sent keep working.
    old_keys: tuple[str, ...] = ()

    def _keys(self) -> list[str]:
        # itsdangerous signs with the last key and verifies with all.
        return [*self.old_keys, self.secret_key]

    def _salt(self, purpose: Purpose) -> str:
        return f"trial-alerts.{purpose.value}"

    def sign(self, purpose: Purpose, object_id: int) -> str:
        # The serializer is built once per key set and purpose: building it per token cost more than
        # signing (a digest send signs one token per recipient).
        return str(_serializer(tuple(self._keys()), self._salt(purpose), purpose is Purpose.CONFIRM).dumps(object_id))

    def verify(self, purpose: Purpose, token: str, max_age_s: int | None = None) -> int:
        try:
            if purpose is Purpose.CONFIRM:
                timed = URLSafeTimedSerializer(self._keys(), salt=self._salt(purpose))
                value = timed.loads(token, max_age=max_age_s)
            else:
                value = URLSafeSerializer(self._keys(), salt=self._salt(purpose)).loads(token)
        except SignatureExpired as exc:
            try:
                payload = timed.load_payload(exc.payload) if exc.payload is not None else None
            except BadSignature:
                payload = None
            raise TokenError("expired", payload if isinstance(payload, int) else None) from None
        except (BadSignature, UnicodeError, ValueError, TypeError):
            raise TokenError("invalid") from None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise TokenError("invalid")
        return value
