"""Signed, purpose-bound link tokens (itsdangerous). Tokens carry ids, never an address.

Each purpose has its own salt, so a confirm token cannot be used to unsubscribe and vice versa.
Confirm tokens expire (the subscriber can ask for a new one); unsubscribe and manage tokens must keep
working in emails read years later, so they carry no timestamp and are signed once and stored.
A confirm token may carry several subscription ids: one sign-up, one email, one link that confirms
everything that sign-up asked for (a single id is signed as before, so old links keep working).
"""

from __future__ import annotations

import enum
import functools
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous import Signer as ItsdangerousSigner
from itsdangerous.encoding import base64_encode, want_bytes


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    MANAGE = "manage"
    # A digest's one-click link: ends every subscription whose items that digest carried (alerts.digests).
    DIGEST = "digest"


class TokenError(Exception):
    """The token cannot be used; ``reason`` is one of ``invalid`` or ``expired``."""

    def __init__(self, reason: str, payload_id: int | None = None, payload_ids: tuple[int, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        # For an expired confirm token the signature is still genuine, so we can offer a resend.
        self.payload_ids = payload_ids or ((payload_id,) if payload_id is not None else ())
        self.payload_id = self.payload_ids[0] if self.payload_ids else None


# A confirm token names at most this many subscriptions (a form offers a study and up to 5 conditions).
MAX_IDS = 10


def _ids(value: Any) -> tuple[int, ...] | None:
    """The ids a payload carries (an id, or a list of ids), or None if it is not such a payload."""
    items = value if isinstance(value, list) else [value]
    if not 0 < len(items) <= MAX_IDS:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        return None
    return tuple(items)


@functools.lru_cache(maxsize=32)
def _serializer(keys: tuple[str, ...], salt: str, timed: bool) -> URLSafeSerializer | URLSafeTimedSerializer:
    if timed:
        return URLSafeTimedSerializer(list(keys), salt=salt)
    return URLSafeSerializer(list(keys), salt=salt)


@functools.lru_cache(maxsize=32)
def _id_signer(key: str, salt: str) -> ItsdangerousSigner:
    """The signer URLSafeSerializer itself signs with (its defaults), built once per key and purpose."""
    return ItsdangerousSigner(key, salt=salt)


@functools.lru_cache(maxsize=32)
def _id_key(key: str, salt: str) -> tuple[bytes, bytes, str]:
    """What that signer signs with: its derived key (derived per call by itsdangerous, an HMAC in Python
    each time), its separator and its digest's name, for ``hmac.digest``'s one-shot OpenSSL path."""
    signer = _id_signer(key, salt)
    return signer.derive_key(), want_bytes(signer.sep), signer.digest_method().name


# Integer payloads below this are signed by the short path in Signer.sign.
_FAST_BELOW = 10**9


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

    def sign(self, purpose: Purpose, object_id: int | Sequence[int]) -> str:
        """A token for one id, or (confirm tokens only) for several."""
        payload: int | list[int]
        if isinstance(object_id, int):
            payload = object_id
        else:
            ids = list(dict.fromkeys(object_id))
            if purpose is not Purpose.CONFIRM or _ids(ids) is None:
                raise ValueError(f"a {purpose.value} token carries one id; a confirm token 1 to {MAX_IDS}")
            payload = ids[0] if len(ids) == 1 else ids
        if isinstance(payload, int) and 0 < payload < _FAST_BELOW and purpose is not Purpose.CONFIRM:
            # The same token URLSafeSerializer makes (tests compare them): base64 of the id's JSON, signed by
            # itsdangerous's own Signer, without the serializer's per-call layers (a signer per key, JSON,
            # a compression attempt): ~7 instead of ~21 us, and a digest send signs one per recipient.
            # JSON of up to 9 digits never compresses (zlib adds 6 bytes of frame), so the serializer
            # would not compress either; larger ids take the serializer.
            # The signature is itsdangerous's (HMAC of the value with the signer's derived key), made with
            # the key derived once: ~2 instead of ~7 us, a digest batch signs 1,000.
            value = base64_encode(str(payload).encode("ascii"))
            derived, sep, digest = _id_key(self.secret_key, self._salt(purpose))
            return (value + sep + base64_encode(hmac.digest(derived, value, digest))).decode("ascii")
        # The serializer is built once per key set and purpose: building it per token cost more than
        # signing.
        serializer = _serializer(tuple(self._keys()), self._salt(purpose), purpose is Purpose.CONFIRM)
        return str(serializer.dumps(payload))

    def verify(self, purpose: Purpose, token: str, max_age_s: int | None = None) -> int:
        """The one id a token carries; TokenError if it is bad, expired, or carries several."""
        ids = self.verify_ids(purpose, token, max_age_s)
        if len(ids) != 1:
            raise TokenError("invalid")
        return ids[0]

    def verify_ids(self, purpose: Purpose, token: str, max_age_s: int | None = None) -> tuple[int, ...]:
        """The ids a token carries (several only for a confirm token)."""
        serializer = _serializer(tuple(self._keys()), self._salt(purpose), purpose is Purpose.CONFIRM)
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
            raise TokenError("expired", payload_ids=_ids(payload) or ()) from None
        except (BadSignature, UnicodeError, ValueError, TypeError):
            raise TokenError("invalid") from None
        ids = _ids(value)
        if ids is None or (len(ids) > 1 and purpose is not Purpose.CONFIRM):
            raise TokenError("invalid")
        return ids
