"""HACA's x402 v2 wire names: the package's header names, and CAIP-2 network ids for chains."""

from __future__ import annotations

import pytest
from x402.http import constants

from haca.types import x402 as wire


def test_header_names_are_those_of_the_x402_package() -> None:
    assert wire.PAYMENT_REQUIRED_HEADER == constants.PAYMENT_REQUIRED_HEADER
    assert wire.PAYMENT_SIGNATURE_HEADER == constants.PAYMENT_SIGNATURE_HEADER
    assert wire.PAYMENT_RESPONSE_HEADER == constants.PAYMENT_RESPONSE_HEADER


def test_a_chain_id_is_the_reference_of_a_haca_network() -> None:
    assert wire.SCHEME == "haca-escrow"
    assert wire.caip2_network("haca-devnet") == "haca:haca-devnet"
    assert wire.chain_id_of("haca:haca-devnet") == "haca-devnet"
    longest = "a_B-9" * 6 + "xy"
    assert wire.chain_id_of(wire.caip2_network(longest)) == longest


@pytest.mark.parametrize("chain_id", ["", "a" * 33, "haca:devnet", "dev net", "dévnet", "a/b", "a.b"])
def test_a_chain_id_that_is_no_caip2_reference_is_refused(chain_id: str) -> None:
    with pytest.raises(ValueError, match="CAIP-2"):
        wire.caip2_network(chain_id)


@pytest.mark.parametrize("network", ["eip155:8453", "haca", "haca-devnet", "HACA:devnet", "haca:", "haca:a:b"])
def test_a_network_not_of_haca_or_malformed_is_refused(network: str) -> None:
    with pytest.raises(ValueError, match="network"):
        wire.chain_id_of(network)
