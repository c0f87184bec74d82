from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from gateway.core.currency import DEFAULT_RATES_PER_USD, CurrencyTable, UnknownCurrencyError

TABLE = CurrencyTable({"EUR": 0.92, "GBP": 0.79, "JPY": 150.0})


def test_default_table_has_usd_eur_gbp() -> None:
    table = CurrencyTable.default()
    assert table.codes == {"USD", "EUR", "GBP"}
    assert (table.rate("USD"), table.rate("EUR"), table.rate("GBP")) == (1.0, 0.92, 0.79)
    assert dict(DEFAULT_RATES_PER_USD) == {"USD": 1.0, "EUR": 0.92, "GBP": 0.79}


def test_usd_is_always_present() -> None:
    assert CurrencyTable({"EUR": 0.5}).codes == {"USD", "EUR"}
    assert CurrencyTable({}).rate("USD") == 1.0


@pytest.mark.parametrize(
    "rates",
    [
        pytest.param({"USD": 1.1}, id="usd-not-one"),
        pytest.param({"EUR": 0.0}, id="zero-rate"),
        pytest.param({"EUR": -0.9}, id="negative-rate"),
        pytest.param({"EUR": math.nan}, id="nan-rate"),
        pytest.param({"EUR": math.inf}, id="infinite-rate"),
    ],
)
def test_invalid_rates_are_rejected(rates: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="rate"):
        CurrencyTable(rates)


@pytest.mark.parametrize(
    ("amount", "code", "usd"),
    [
        pytest.param(2.0, "USD", 2.0, id="usd-identity"),
        pytest.param(0.92, "EUR", 1.0, id="eur"),
        pytest.param(1.58, "GBP", 2.0, id="gbp"),
        pytest.param(300.0, "JPY", 2.0, id="jpy-custom-table"),
        pytest.param(0.92, "eur", 1.0, id="lower-case-code"),
    ],
)
def test_to_usd_and_back(amount: float, code: str, usd: float) -> None:
    assert TABLE.to_usd(amount, code) == pytest.approx(usd, rel=1e-12)
    assert TABLE.from_usd(usd, code) == pytest.approx(amount, rel=1e-12)


def test_conversion_is_vectorised() -> None:
    amounts = np.array([1.0, 2.0, 0.5])
    np.testing.assert_allclose(TABLE.to_usd(amounts, "EUR"), amounts / 0.92)
    np.testing.assert_allclose(TABLE.from_usd(amounts, "GBP"), amounts * 0.79)
    mixed = np.array([0.92, 0.79, 150.0, 3.0])
    np.testing.assert_allclose(mixed / TABLE.rates_for(["EUR", "GBP", "JPY", "USD"]), [1.0, 1.0, 1.0, 3.0])


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: TABLE.rate("CHF"), id="rate"),
        pytest.param(lambda: TABLE.to_usd(1.0, "CHF"), id="to-usd"),
        pytest.param(lambda: TABLE.from_usd(np.ones(2), "CHF"), id="from-usd-array"),
        pytest.param(lambda: TABLE.rates_for(["EUR", "CHF"]), id="rates-for"),
        pytest.param(lambda: TABLE.price_from_usd(1.0, "CHF"), id="price"),
    ],
)
def test_unknown_currency_names_the_code(call: Callable[[], object]) -> None:
    with pytest.raises(UnknownCurrencyError, match="'CHF'") as caught:
        call()
    assert caught.value.code == "CHF"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        pytest.param(["EUR", "GBP"], "EUR", id="first-known"),
        pytest.param(["CHF", "GBP"], "GBP", id="skips-unknown"),
        pytest.param(["CHF"], "USD", id="none-known-falls-back-to-usd"),
        pytest.param([], "USD", id="empty"),
        pytest.param(None, "USD", id="absent"),
        pytest.param(["gbp"], "GBP", id="normalised-upper-case"),
    ],
)
def test_response_currency(requested: list[str] | None, expected: str) -> None:
    assert TABLE.response_currency(requested) == expected


@pytest.mark.parametrize(
    ("price_usd", "code", "expected"),
    [
        pytest.param(1.23456, "USD", 1.2346, id="four-decimals"),
        pytest.param(1.00005, "USD", 1.0001, id="half-up-on-decimal-repr"),
        pytest.param(1.00004, "USD", 1.0, id="below-half-down"),
        pytest.param(2.5, "USD", 2.5, id="exact"),
        pytest.param(1.01, "EUR", 0.9292, id="eur-converted"),
        pytest.param(1.01, "GBP", 0.7979, id="gbp-converted"),
        pytest.param(3.3333, "GBP", 2.6333, id="gbp-rounded-down"),  # 2.633307
        pytest.param(1.25, "JPY", 187.5, id="jpy"),
    ],
)
def test_price_from_usd_converts_and_rounds(price_usd: float, code: str, expected: float) -> None:
    assert TABLE.price_from_usd(price_usd, code) == expected
