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
