"""The fee a client signs: exactly the quote for its rows, at most --max-fee, or by default at
most the model's price on chain — never a node's own price, which a node can change at once."""

from __future__ import annotations

import pytest

from haca.client.payment import PaymentOffer, PaymentRequiredError, accept_fee
from tests.unit.node.nodehelpers import manifest as chain_manifest

MANIFEST = chain_manifest(price=100, price_unit="row", max_rows=8)


def offer(unit_price: int, price_unit: str = "row", max_rows: int = 8) -> PaymentOffer:
    return PaymentOffer("c", "0x" + "11" * 20, unit_price, price_unit, max_rows, "sha256:" + "ab" * 32, "m",
                        "vanilla", 50, 10)  # fmt: skip


def test_the_quote_for_the_rows_is_what_is_signed() -> None:
    assert accept_fee(offer(100), 3, None, MANIFEST) == 300
    assert accept_fee(offer(100, "request"), 3, None, MANIFEST) == 100  # a node may charge less


def test_by_default_a_quote_above_the_models_price_is_refused_whatever_the_node_registered() -> None:
    # The attack: the node re-registers at ~the client's whole lane and quotes that.
    with pytest.raises(PaymentRequiredError, match="more than the model's price on chain"):
        accept_fee(offer(950_000), 1, None, MANIFEST)
    assert accept_fee(offer(950_000), 1, 950_000, MANIFEST) == 950_000  # only with an explicit max fee


def test_an_explicit_max_fee_bounds_the_fee_and_rows_beyond_the_quote_are_refused() -> None:
    with pytest.raises(PaymentRequiredError, match="node asks 300, more than the max fee 299"):
        accept_fee(offer(100), 3, 299, MANIFEST)
    with pytest.raises(PaymentRequiredError, match="at most 8 per request"):
        accept_fee(offer(100), 9, 10**9, MANIFEST)
