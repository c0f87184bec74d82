"""Currency conversion for floors and prices.

Everything inside the auction is USD (bids, eCPMs, floors); currencies appear only at the edges: a floor
arrives in its `bidfloorcur` and is converted to USD once, a winning price leaves in the response currency.

A `CurrencyTable` holds "units of that currency per 1 USD" (EUR 0.92 means 1 USD = 0.92 EUR), so
`to_usd(x, c) = x / rate[c]` and `from_usd(x, c) = x * rate[c]`. `DEFAULT_RATES_PER_USD` is a fixed table for
local use and tests only; a deployment passes its own rates (configuration), the code does not fetch them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Final, overload

import numpy as np
import numpy.typing as npt

USD: Final = "USD"

# Default for local runs and tests, not market data: operators configure real rates.
DEFAULT_RATES_PER_USD: Final[Mapping[str, float]] = MappingProxyType({USD: 1.0, "EUR": 0.92, "GBP": 0.79})

# OpenRTB prices are CPM floats; 4 decimals is finer than any exchange bills and keeps responses stable.
PRICE_DECIMALS: Final = 4
_PRICE_QUANTUM: Final = Decimal(1).scaleb(-PRICE_DECIMALS)


class UnknownCurrencyError(ValueError):
    """A currency code the table has no rate for; `code` is the code as given."""

    def __init__(self, code: str) -> None:
        super().__init__(f"unknown currency {code!r}: no exchange rate configured")
        self.code = code


class CurrencyTable:
    """Immutable exchange rates against USD. Codes are ISO 4217 and matched case-insensitively."""

    __slots__ = ("_rates",)

    def __init__(self, rates_per_usd: Mapping[str, float]) -> None:
        rates: dict[str, float] = {USD: 1.0}
        for code, rate in rates_per_usd.items():
            normalised = code.upper()
            value = float(rate)
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f"exchange rate for {code!r} must be a positive finite number, got {rate!r}")
            if normalised == USD and value != 1.0:
                raise ValueError(f"USD is the base currency, its rate must be 1.0, got {rate!r}")
            rates[normalised] = value
        self._rates: Mapping[str, float] = MappingProxyType(rates)

    @classmethod
    def default(cls) -> CurrencyTable:
        return cls(DEFAULT_RATES_PER_USD)

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(self._rates)

    def knows(self, code: str) -> bool:
        return code.upper() in self._rates

    def rate(self, code: str) -> float:
        """Units of `code` per 1 USD; raises `UnknownCurrencyError`."""
        try:
            return self._rates[code.upper()]
        except KeyError:
            raise UnknownCurrencyError(code) from None

    @overload
    def to_usd(self, amount: float, code: str) -> float: ...
    @overload
    def to_usd(self, amount: npt.NDArray[np.float64], code: str) -> npt.NDArray[np.float64]: ...
    def to_usd(self, amount: float | npt.NDArray[np.float64], code: str) -> float | npt.NDArray[np.float64]:
        return amount / self.rate(code)

    @overload
    def from_usd(self, amount: float, code: str) -> float: ...
    @overload
    def from_usd(self, amount: npt.NDArray[np.float64], code: str) -> npt.NDArray[np.float64]: ...
    def from_usd(self, amount: float | npt.NDArray[np.float64], code: str) -> float | npt.NDArray[np.float64]:
        return amount * self.rate(code)

    def rates_for(self, codes: Sequence[str]) -> npt.NDArray[np.float64]:
        """Per-element rates, for converting an array whose elements carry different currencies:
        `amounts / table.rates_for(codes)` is the USD value of each."""
        return np.fromiter((self.rate(code) for code in codes), dtype=np.float64, count=len(codes))

    def response_currency(self, requested: Sequence[str] | None) -> str:
        """The request's `cur` rule: its first entry this table can convert to, else USD (normalised)."""
        for code in requested or ():
            if self.knows(code):
                return code.upper()
        return USD

    def price_from_usd(self, amount_usd: float, code: str) -> float:
        """A USD price in `code`, rounded to `PRICE_DECIMALS` half-up on the shortest decimal repr.

        Rounding the repr (not the binary float) makes 1.00005 round to 1.0001 as a reader expects;
        `round()` would give 1.0 because the float is just below the half."""
        converted = Decimal(repr(float(self.from_usd(float(amount_usd), code))))
        return float(converted.quantize(_PRICE_QUANTUM, rounding=ROUND_HALF_UP))
