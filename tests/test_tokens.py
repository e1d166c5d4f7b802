import time

import pytest

from alerts.tokens import Purpose, Signer, TokenError

SIGNER = Signer("k" * 32)


def test_round_trip_for_each_purpose() -> None:
    for purpose in Purpose:
        assert SIGNER.verify(purpose, SIGNER.sign(purpose, 42), max_age_s=60) == 42


@pytest.mark.parametrize("other", [Purpose.UNSUBSCRIBE, Purpose.MANAGE])
def test_a_token_cannot_be_used_for_another_purpose(other: Purpose) -> None:
    with pytest.raises(TokenError) as info:
        SIGNER.verify(other, SIGNER.sign(Purpose.CONFIRM, 7))
    assert info.value.reason == "invalid"
    with pytest.raises(TokenError):
        SIGNER.verify(Purpose.CONFIRM, SIGNER.sign(other, 7), max_age_s=60)


def test_tampered_and_foreign_tokens_are_invalid() -> None:
    token = SIGNER.sign(Purpose.UNSUBSCRIBE, 5)
    for bad in [
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        "",
        "garbage",
        "a.b.c",
        token + "x",
        Signer("z" * 32).sign(Purpose.UNSUBSCRIBE, 5),
    ]:
        with pytest.raises(TokenError):
            SIGNER.verify(Purpose.UNSUBSCRIBE, bad)


def test_confirm_tokens_expire_and_say_which_subscription() -> None:
    token = SIGNER.sign(Purpose.CONFIRM, 9)
    time.sleep(2.1)
    with pytest.raises(TokenError) as info:
        SIGNER.verify(Purpose.CONFIRM, token, max_age_s=1)
    assert info.value.reason == "expired"
    assert info.value.payload_id == 9


def test_tokens_carry_no_address_and_survive_key_rotation() -> None:
    token = SIGNER.sign(Purpose.UNSUBSCRIBE, 123)
    assert "@" not in token
    rotated = Signer("n" * 32, old_keys=("k" * 32,))
    assert rotated.verify(Purpose.UNSUBSCRIBE, token) == 123


def test_one_confirm_token_for_everything_one_sign_up_asked_for() -> None:
    token = SIGNER.sign(Purpose.CONFIRM, [4, 9, 4])
    assert SIGNER.verify_ids(Purpose.CONFIRM, token, max_age_s=60) == (4, 9)
    # A single id is signed as it always was, so links already in inboxes keep working.
    assert SIGNER.sign(Purpose.CONFIRM, [7]) == SIGNER.sign(Purpose.CONFIRM, 7)
    with pytest.raises(TokenError):
        SIGNER.verify(Purpose.CONFIRM, token, max_age_s=60)  # callers expecting one id get none
    with pytest.raises(ValueError, match="one id"):
        SIGNER.sign(Purpose.UNSUBSCRIBE, [1, 2])
    with pytest.raises(ValueError):
        SIGNER.sign(Purpose.CONFIRM, list(range(1, 20)))


def test_an_expired_multi_id_token_says_which_subscriptions() -> None:
    token = SIGNER.sign(Purpose.CONFIRM, [3, 5])
    time.sleep(2.1)
    with pytest.raises(TokenError) as info:
        SIGNER.verify_ids(Purpose.CONFIRM, token, max_age_s=1)
    assert info.value.reason == "expired"
    assert info.value.payload_ids == (3, 5)


def test_short_path_signs_ids_exactly_as_itsdangerous() -> None:
    # Signer.sign's short path for one id must make the very token the serializer makes (links already
    # sent, and verify, depend on it), with and without rotated keys, at the edges of the short path.
    from itsdangerous import URLSafeSerializer

    for signer in (Signer("s" * 40), Signer("new-key-" * 5, old_keys=("old-key",))):
        for purpose in (Purpose.DIGEST, Purpose.UNSUBSCRIBE, Purpose.MANAGE):
            serializer = URLSafeSerializer(signer.secret_key, salt=f"trial-alerts.{purpose.value}")
            for object_id in [*range(1, 200), 10**8, 111_111_111, 999_999_999, 10**9, 10**18]:
                token = signer.sign(purpose, object_id)
                assert token == serializer.dumps(object_id)
                assert signer.verify(purpose, token) == object_id
