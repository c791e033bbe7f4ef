"""The vault under canonical pseudonyms (17f4b2e): every spelling of one e-mail address, card, IBAN or phone number gets
one tag, so the vault sees one placeholder with several values. It keeps one that works for all of them, their
canonical form (``redaction.canonical_form``), live and when the file is read back; only values of different canonical
forms under one tag (a real HMAC collision, found here by search) stay ambiguous."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.vault import AMBIGUOUS, KEY_ENV, Vault, new_key

SALT = b"s" * 32
REDACTOR = Redactor(salt=SALT)

# (kind, the spellings one call may carry, the value the vault keeps for them)
SPELLINGS = [
    ("email", ["Jane.Doe@Gmail.com", "jane.doe@gmail.com"], "jane.doe@gmail.com"),
    ("email", ["Jane.Doe@Gmail.com", "JANE.DOE@GMAIL.COM"], "jane.doe@gmail.com"),  # neither as kept
    ("credit_card", [4111111111111111, "4111 1111 1111 1111"], "4111111111111111"),
    ("credit_card", ["4111 1111 1111 1111", 4111111111111111], "4111111111111111"),
    ("credit_card", ["4111-1111-1111-1111", "4111 1111 1111 1111", 4111111111111111], "4111111111111111"),
    ("iban", ["DE89 3704 0044 0532 0130 00", "DE89370400440532013000"], "DE89370400440532013000"),
    ("iban", ["de89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"], "DE89370400440532013000"),
    ("phone", ["+44 20 7946 0958", "+442079460958"], "+442079460958"),
    ("us_ssn", ["123-45-6789", "123456789"], "123456789"),
]


@pytest.mark.parametrize(("kind", "values", "kept"), SPELLINGS)
def test_spellings_of_one_value_are_one_value_in_the_vault_live_and_read_back(tmp_path: Path, kind: str, values: list, kept: str) -> None:
    placeholders = {REDACTOR.placeholder(kind, value) for value in values}
    assert len(placeholders) == 1, "one pseudonym for every spelling (canonical tags)"
    [placeholder] = placeholders
    vault = Vault(tmp_path / "v.vault", create=True)
    for value in values:
        vault.add(placeholder, value)
    assert vault.lookup(placeholder) == kept
    assert Vault(tmp_path / "v.vault").lookup(placeholder) == kept


@pytest.mark.parametrize(("kind", "values", "kept"), SPELLINGS)
def test_every_order_of_the_spellings_keeps_the_same_value(tmp_path: Path, kind: str, values: list, kept: str) -> None:
    placeholder = REDACTOR.placeholder(kind, values[0])
    for i, order in enumerate((values, values[::-1], values + values[:1], values[1:] + values)):
        vault = Vault(tmp_path / f"{i}.vault", create=True)
        for value in order:
            vault.add(placeholder, value)
        assert vault.lookup(placeholder) == kept, order
        assert Vault(tmp_path / f"{i}.vault").lookup(placeholder) == kept, order


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_vault_file_written_with_both_spellings_reads_back_to_their_canonical_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    """A vault written before this fix (the first spelling, then the second, which made the tag ambiguous) holds both
    spellings as they were seen; read now, it restores their canonical form. Encrypted: the number's line is ``"n"``,
    the strings' ``"c"``."""
    if encrypted:
        monkeypatch.setenv(KEY_ENV, new_key())
    email, card, iban = (
        REDACTOR.placeholder("email", "jane.doe@gmail.com"),
        REDACTOR.placeholder("credit_card", 4111111111111111),
        REDACTOR.placeholder("iban", "DE89370400440532013000"),
    )
    seen = [
        (email, "Jane.Doe@Gmail.com"),
        (card, 4111111111111111),
        (iban, "DE89 3704 0044 0532 0130 00"),
        (email, "jane.doe@gmail.com"),
        (card, "4111 1111 1111 1111"),
        (iban, "DE89370400440532013000"),
    ]
    path = tmp_path / "v.vault"
    vault = Vault(path, create=True)
    cipher = vault._cipher
    vault.close()
    with open(path, "a", encoding="utf-8") as fh:  # the lines as any earlier ee wrote them: every pair seen, in order
        for placeholder, value in seen:
            if cipher is None:
                entry = {"p": placeholder, "v": value}
            elif isinstance(value, str):
                entry = {"p": placeholder, "c": cipher.encrypt(value.encode()).decode()}
            else:
                entry = {"p": placeholder, "n": cipher.encrypt(json.dumps(value).encode()).decode()}
            fh.write(json.dumps(entry) + "\n")
    lines = path.read_text().splitlines()[1:]
    assert len(lines) == 6 and ('"n"' in lines[1]) is encrypted
    read = Vault(path)
    assert (read.lookup(email), read.lookup(card), read.lookup(iban)) == (
        "jane.doe@gmail.com",
        "4111111111111111",
        "DE89370400440532013000",
    )
    # and a live vault given the same pairs holds the same, writing every spelling that changed what it holds
    live = Vault(tmp_path / "live.vault", create=True)
    for placeholder, value in seen:
        live.add(placeholder, value)
    assert {p: live.lookup(p) for p in (email, card, iban)} == {p: read.lookup(p) for p in (email, card, iban)}
    assert len((tmp_path / "live.vault").read_text().splitlines()) == 1 + 6
    # a third spelling changes nothing, and is not written
    live.add(email, "JANE.DOE@gmail.com")
    assert live.lookup(email) == "jane.doe@gmail.com" and len((tmp_path / "live.vault").read_text().splitlines()) == 1 + 6


# Two values of different canonical forms whose tags collide under SALT (found by trying user<i>@example.com and
# 40000000000<i> in turn: 32-bit tags collide after some 2**16 values)
EMAIL_COLLISION = ("user37518@example.com", "user81922@example.com")
CARD_COLLISION = (4000000000057254, "4000 0000 0006 4719")


@pytest.mark.parametrize("encrypted", [False, True])
def test_two_values_whose_tags_collide_stay_ambiguous_whatever_their_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    if encrypted:
        monkeypatch.setenv(KEY_ENV, new_key())
    email = REDACTOR.placeholder("email", EMAIL_COLLISION[0])
    card = REDACTOR.placeholder("credit_card", CARD_COLLISION[0])
    assert REDACTOR.placeholder("email", EMAIL_COLLISION[1]) == email and REDACTOR.placeholder("credit_card", CARD_COLLISION[1]) == card
    vault = Vault(tmp_path / "v.vault", create=True)
    vault.add(email, "User37518@Example.com")
    vault.add(email, EMAIL_COLLISION[0])  # a spelling of the first: one value still
    assert vault.lookup(email) == EMAIL_COLLISION[0]
    vault.add(email, EMAIL_COLLISION[1])
    vault.add(card, CARD_COLLISION[0])
    vault.add(card, CARD_COLLISION[1])
    vault.add(card, "4000000000057254")  # the first one's own digits again: still ambiguous
    assert vault.lookup(email) is AMBIGUOUS and vault.lookup(card) is AMBIGUOUS
    read = Vault(tmp_path / "v.vault")
    assert read.lookup(email) is AMBIGUOUS and read.lookup(card) is AMBIGUOUS


def test_values_of_different_canonical_forms_under_a_salt_mixup_stay_ambiguous(tmp_path: Path) -> None:
    """Two addresses under one placeholder (a vault fed by stores of different salts, or a hand-edited file), which no
    spelling makes one value of."""
    placeholder = "[REDACTED:email:0a1b2c3d]"
    vault = Vault(tmp_path / "v.vault", create=True)
    vault.add(placeholder, "Jane.Doe@Gmail.com")
    vault.add(placeholder, "john@example.com")
    vault.add(placeholder, "jane.doe@gmail.com")
    assert vault.lookup(placeholder) is AMBIGUOUS and Vault(tmp_path / "v.vault").lookup(placeholder) is AMBIGUOUS


def test_a_number_and_its_own_digits_as_text_still_keep_the_string_and_two_numbers_keep_the_integer(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v.vault", create=True)
    pin, card, card_float = (
        "[REDACTED:secret:0a1b2c3d]",
        REDACTOR.placeholder("credit_card", 4111111111111111),
        "[REDACTED:credit_card:1a2b3c4d]",
    )
    vault.add(pin, 4821)
    vault.add(pin, "4821")
    vault.add(card, 4111111111111111.0)  # a whole-number float card: the tag of its integer's digits
    vault.add(card, 4111111111111111)
    vault.add(card_float, 4111111111111111)
    vault.add(card_float, 4111111111111111.0)
    for read in (vault, Vault(tmp_path / "v.vault")):
        assert read.lookup(pin) == "4821"
        assert read.lookup(card) == 4111111111111111 and type(read.lookup(card)) is int
        assert read.lookup(card_float) == 4111111111111111 and type(read.lookup(card_float)) is int


def test_a_version_1_vault_keeps_strings_and_one_value_for_the_spellings(tmp_path: Path) -> None:
    path = tmp_path / "old.vault"
    path.write_text(json.dumps({"format": "ee-redaction-vault", "version": 1, "encryption": None}) + "\n")
    path.chmod(0o600)
    card = REDACTOR.placeholder("credit_card", 4111111111111111)
    vault = Vault(path)
    vault.add(card, 4111111111111111)  # written as its digits (an older ee reads strings only)
    vault.add(card, "4111 1111 1111 1111")
    assert vault.lookup(card) == "4111111111111111" == Vault(path).lookup(card)
    assert all(isinstance(json.loads(line)["v"], str) for line in path.read_text().splitlines()[1:])
