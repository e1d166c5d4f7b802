"""Signed, purpose-bound link tokens (itsdangerous). Tokens carry ids, never an address.

Each purpose has its own salt, so a confirm token cannot be used to unsubscribe and vice versa.
Confirm tokens expire (the subscriber can ask for a new one); unsubscribe and manage tokens must keep
working in emails read years later, so they carry no timestamp and are signed once and stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    MANAGE = "manage"


class TokenError(Exception):
    """The token cannot be used; ``reason`` is one of ``invalid`` or ``expired``."""

    def __init__(self, reason: str, payload_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # For an expired confirm token the signature is still genuine, so we can offer a resend.
        self.payload_id = payload_id


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

    @cached_property
    def _serializers(self) -> dict[Purpose, URLSafeSerializer | URLSafeTimedSerializer]:
        # Built once per signer, not per token: every link page verifies one (a scanner burst, millions).
        keys, salt = self._keys(), self._salt
        return {
            purpose: URLSafeTimedSerializer(keys, salt=salt(purpose))
            if purpose is Purpose.CONFIRM
            else URLSafeSerializer(keys, salt=salt(purpose))
            for purpose in Purpose
        }

    def sign(self, purpose: Purpose, object_id: int) -> str:
        return str(self._serializers[purpose].dumps(object_id))

    def verify(self, purpose: Purpose, token: str, max_age_s: int | None = None) -> int:
        serializer = self._serializers[purpose]
        try:
            if isinstance(serializer, URLSafeTimedSerializer):
                value = serializer.loads(token, max_age=max_age_s)
            else:
                value = serializer.loads(token)
        except SignatureExpired as exc:
            try:
                payload = serializer.load_payload(exc.payload) if exc.payload is not None else None
            except BadSignature:
                payload = None
            raise TokenError("expired", payload if isinstance(payload, int) else None) from None
        except (BadSignature, UnicodeError, ValueError, TypeError):
            raise TokenError("invalid") from None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise TokenError("invalid")
        return value
