"""Signed notice URLs: what an exchange substitutes verifies; anything altered, swapped or replayed fails."""

from __future__ import annotations

import string
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest, ForgedNotice, InvalidRequest, MalformedRequest
from gateway.notices.checks import check_notice
from gateway.notices.keyring import NoticeKeyring
from gateway.notices.signing import SIGNED_FIELDS, BidFacts, NoticeKind, NoticeSigner

KEY_A = b"a" * 32
KEY_B = b"b" * 32
NOW = 1_800_000_000.0
FACTS = BidFacts(
    bid_id="0123abcd-" + "f" * 32,
    campaign_id="camp-1",
    price=2.5,
    currency="EUR",
    auction_id="auction-7",
    imp_id="imp-1",
    response_bidid="resp-9",
    expires_at=int(NOW) + 3600,
)
KEYRING = NoticeKeyring({"a": KEY_A}, "a")


def substitute(url: str, *, price: str = "1.25", loss: str = "102", facts: BidFacts = FACTS) -> str:
    """What an exchange does: replace each macro in the URL with its value (URL-encoded)."""
    values = {
        "${AUCTION_ID}": facts.auction_id,
        "${AUCTION_BID_ID}": facts.response_bidid,
        "${AUCTION_IMP_ID}": facts.imp_id,
        "${AUCTION_CURRENCY}": facts.currency,
        "${AUCTION_PRICE}": price,
        "${AUCTION_LOSS}": loss,
    }
    for macro, value in values.items():
        url = url.replace(macro, quote(value, safe=""))
    return url


def query_of(url: str) -> bytes:
    return urlsplit(url).query.encode()


def filled(
    kind: NoticeKind, signer_keyring: NoticeKeyring = KEYRING, *, price: str = "1.25", loss: str = "102"
) -> bytes:
    url = NoticeSigner(signer_keyring, "https://gw.example").url(kind, FACTS)
    return query_of(substitute(url, price=price, loss=loss))


def with_field(query: bytes, name: str, value: str) -> bytes:
    pairs = [(k, value if k == name else v) for k, v in parse_qsl(query.decode(), keep_blank_values=True)]
    return urlencode(pairs).encode()


def test_urls_carry_the_macros_and_the_path_of_their_kind() -> None:
    urls = NoticeSigner(KEYRING, "https://gw.example/").urls(FACTS)
    assert urls.nurl.startswith("https://gw.example/v1/notices/win?")
    assert urls.burl.startswith("https://gw.example/v1/notices/bill?")
    assert urls.lurl.startswith("https://gw.example/v1/notices/loss?")
    for url in (urls.nurl, urls.burl, urls.lurl):
        for macro in ("${AUCTION_ID}", "${AUCTION_BID_ID}", "${AUCTION_IMP_ID}", "${AUCTION_CURRENCY}"):
            assert macro in url
    assert "${AUCTION_PRICE}" in urls.burl
    assert "${AUCTION_PRICE}" in urls.nurl
    assert "${AUCTION_LOSS}" in urls.lurl
    assert "${AUCTION_PRICE}" not in urls.lurl
    assert FACTS.auction_id not in urls.burl, "the auction id is signed, not carried"


@pytest.mark.parametrize("kind", [NoticeKind.WIN, NoticeKind.BILL])
def test_a_substituted_url_verifies(kind: NoticeKind) -> None:
    checked = check_notice(kind, filled(kind), KEYRING, NOW)
    assert (checked.bid_id, checked.campaign_id, checked.bid_price, checked.currency) == (
        FACTS.bid_id,
        "camp-1",
        2.5,
        "EUR",
    )
    assert checked.price == 1.25


def test_a_loss_url_verifies_with_its_reason() -> None:
    assert check_notice(NoticeKind.LOSS, filled(NoticeKind.LOSS), KEYRING, NOW).loss_reason == 102


def test_a_price_equal_to_the_bid_is_accepted_and_one_above_is_not() -> None:
    assert check_notice(NoticeKind.BILL, filled(NoticeKind.BILL, price="2.5"), KEYRING, NOW).price == 2.5
    with pytest.raises(InvalidRequest) as refused:
        check_notice(NoticeKind.BILL, filled(NoticeKind.BILL, price="2.51"), KEYRING, NOW)
    assert refused.value.code == "price_above_bid"


@pytest.mark.parametrize("price", ["-1", "nan", "inf", "1e999", "abc", "", " 1", "1_0", "0x10"])
def test_a_price_that_is_not_a_finite_non_negative_number_is_invalid(price: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_notice(NoticeKind.BILL, filled(NoticeKind.BILL, price=price), KEYRING, NOW)
    assert (refused.value.code, refused.value.field) == ("invalid_value", "price")


@pytest.mark.parametrize("reason", ["-1", "x", "1.5", ""])
def test_a_loss_reason_that_is_not_an_integer_is_invalid(reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_notice(NoticeKind.LOSS, filled(NoticeKind.LOSS, loss=reason), KEYRING, NOW)
    assert refused.value.field == "loss"


@pytest.mark.parametrize("encoded", [False, True])
def test_an_unsubstituted_macro_is_named(encoded: bool) -> None:
    url = NoticeSigner(KEYRING, "https://gw.example").url(NoticeKind.BILL, FACTS)
    url = url.replace("${AUCTION_ID}", FACTS.auction_id).replace("${AUCTION_BID_ID}", FACTS.response_bidid)
    url = url.replace("${AUCTION_IMP_ID}", FACTS.imp_id).replace("${AUCTION_CURRENCY}", "EUR")
    if encoded:
        url = url.replace("${AUCTION_PRICE}", "%24%7BAUCTION_PRICE%7D")
    with pytest.raises(MalformedRequest) as refused:
        check_notice(NoticeKind.BILL, query_of(url), KEYRING, NOW)
    assert refused.value.code == "unsubstituted_macro"
    assert refused.value.field == "price"
    assert "${AUCTION_PRICE}" in refused.value.message


def test_a_twice_encoded_macro_is_still_unsubstituted() -> None:
    query = with_field(filled(NoticeKind.BILL), "price", "%24%7BAUCTION_PRICE%7D")
    with pytest.raises(MalformedRequest) as refused:
        check_notice(NoticeKind.BILL, query, KEYRING, NOW)
    assert refused.value.code == "unsubstituted_macro"


def test_a_missing_field_is_named() -> None:
    pairs = [p for p in parse_qsl(filled(NoticeKind.BILL).decode()) if p[0] != "sig"]
    with pytest.raises(MalformedRequest) as refused:
        check_notice(NoticeKind.BILL, urlencode(pairs).encode(), KEYRING, NOW)
    assert (refused.value.code, refused.value.field) == ("missing_field", "sig")


def test_a_repeated_field_is_refused() -> None:
    with pytest.raises(MalformedRequest) as refused:
        check_notice(NoticeKind.BILL, filled(NoticeKind.BILL) + b"&bp=100", KEYRING, NOW)
    assert refused.value.code == "malformed_query"


@pytest.mark.parametrize("name", SIGNED_FIELDS)
def test_altering_any_signed_field_is_forged(name: str) -> None:
    query = filled(NoticeKind.BILL)
    original = dict(parse_qsl(query.decode()))[name]
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, with_field(query, name, original + "0"), KEYRING, NOW)
    assert refused.value.status_code == 403
    assert refused.value.check == ("unknown_key" if name == "kid" else "signature")


def test_a_loss_url_turned_into_a_bill_url_is_forged() -> None:
    loss = filled(NoticeKind.LOSS)
    as_bill = loss.replace(b"loss=102", b"price=0.01")
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, as_bill, KEYRING, NOW)
    assert refused.value.check == "signature"


def test_a_win_url_sent_to_the_bill_route_is_forged() -> None:
    with pytest.raises(ForgedNotice):
        check_notice(NoticeKind.BILL, filled(NoticeKind.WIN), KEYRING, NOW)


@pytest.mark.parametrize("field", ["auction_id", "imp_id", "response_bidid"])
def test_a_url_replayed_for_another_auction_imp_or_response_is_forged(field: str) -> None:
    url = NoticeSigner(KEYRING, "https://gw.example").url(NoticeKind.BILL, FACTS)
    other = {**{f: getattr(FACTS, f) for f in BidFacts.__dataclass_fields__}, field: "another"}
    replayed = substitute(url, facts=BidFacts(**other))
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, query_of(replayed), KEYRING, NOW)
    assert refused.value.check == "signature"


def test_a_currency_other_than_the_bids_is_forged() -> None:
    query = with_field(filled(NoticeKind.BILL), "cur", "USD")
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, query, KEYRING, NOW)
    assert refused.value.check == "currency"


def test_the_currency_macro_may_come_in_lower_case() -> None:
    assert check_notice(NoticeKind.BILL, with_field(filled(NoticeKind.BILL), "cur", "eur"), KEYRING, NOW)


def test_an_expired_url_is_refused() -> None:
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, filled(NoticeKind.BILL), KEYRING, FACTS.expires_at + 1.0)
    assert refused.value.check == "expired"
    assert check_notice(NoticeKind.BILL, filled(NoticeKind.BILL), KEYRING, float(FACTS.expires_at))


def test_rotation_the_previous_key_still_verifies_and_a_removed_one_does_not() -> None:
    signed_before = filled(NoticeKind.BILL, NoticeKeyring({"a": KEY_A}, "a"))
    during = NoticeKeyring({"a": KEY_A, "b": KEY_B}, "b")
    signed_during = filled(NoticeKind.BILL, during)
    assert b"kid=b" in signed_during
    assert check_notice(NoticeKind.BILL, signed_before, during, NOW).bid_id == FACTS.bid_id
    after = NoticeKeyring({"b": KEY_B}, "b")
    assert check_notice(NoticeKind.BILL, signed_during, after, NOW)
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, signed_before, after, NOW)
    assert refused.value.check == "unknown_key"


def test_a_url_signed_with_another_secret_under_the_same_key_id_is_forged() -> None:
    forger = NoticeKeyring({"a": b"z" * 32}, "a")
    with pytest.raises(ForgedNotice) as refused:
        check_notice(NoticeKind.BILL, filled(NoticeKind.BILL, forger), KEYRING, NOW)
    assert refused.value.check == "signature"


# ------------------------------------------------------------------------------------------------ fuzz

_MUTATION = st.text(alphabet=string.printable + "é☃\x00", max_size=40).filter(lambda s: "${" not in s)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from((*SIGNED_FIELDS, "sig", "cur")),
    value=_MUTATION,
    kind=st.sampled_from(list(NoticeKind)),
)
def test_any_mutation_of_a_signed_field_is_forged(name: str, value: str, kind: NoticeKind) -> None:
    query = filled(kind)
    original = dict(parse_qsl(query.decode()))[name]
    if value == original or (name == "cur" and value.upper() == FACTS.currency):
        return  # not a mutation (the currency macro is compared case-insensitively)
    with pytest.raises(ForgedNotice):
        check_notice(kind, with_field(query, name, value), KEYRING, NOW)


@settings(max_examples=300, deadline=None)
@given(
    query=st.binary(max_size=400) | st.text(max_size=400).map(str.encode),
    kind=st.sampled_from(list(NoticeKind)),
)
def test_junk_query_strings_are_refused_as_bad_requests(query: bytes, kind: NoticeKind) -> None:
    with pytest.raises(BadRequest):
        check_notice(kind, query, KEYRING, NOW)


@pytest.mark.parametrize(("field", "value"), [("exp", "x"), ("exp", "nan"), ("bp", "1e999"), ("bp", "two")])
def test_a_validly_signed_url_with_a_non_number_is_refused_as_forged_not_a_500(
    field: str, value: str
) -> None:
    # Whoever holds a key (the public dev key, a leaked one) can sign anything: still a 403, never a crash.
    from gateway.notices.signing import signature  # noqa: PLC0415 - the signer's own primitive, to forge with

    query = with_field(filled(NoticeKind.BILL), field, value)
    params = dict(parse_qsl(query.decode(), keep_blank_values=True))
    resigned = signature(KEY_A, NoticeKind.BILL.value, [params[name] for name in SIGNED_FIELDS])
    with pytest.raises(ForgedNotice) as caught:
        check_notice(NoticeKind.BILL, with_field(query, "sig", resigned), KEYRING, NOW)
    assert caught.value.field == field
