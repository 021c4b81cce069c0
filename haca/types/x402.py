"""x402 version 2 wire names shared by the node and the client.

HACA's payment scheme is `haca-escrow`: the client signs a `PaymentAuthorization` (EIP-712) that
the node settles later against the client's escrow on chain. In x402 v2 a network is a CAIP-2 id
(`namespace:reference`); a HACA chain is `haca:<chain id>`. The HTTP header names are those of
x402 v2 (`x402.http.constants`; not imported here so that the types layer needs no x402)."""

from __future__ import annotations

import re

SCHEME = "haca-escrow"
NETWORK_NAMESPACE = "haca"
X402_VERSION = 2

PAYMENT_REQUIRED_HEADER = "PAYMENT-REQUIRED"  # 402 answer: base64 JSON PaymentRequired
PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"  # paid retry: base64 JSON PaymentPayload
PAYMENT_RESPONSE_HEADER = "PAYMENT-RESPONSE"  # paid answer: base64 JSON SettleResponse

DENOM_DECIMALS = 18  # base units per whole token, as 10**DENOM_DECIMALS (for x402 spend controls)

_REFERENCE = re.compile(r"[-_a-zA-Z0-9]{1,32}")


def caip2_network(chain_id: str) -> str:
    """The CAIP-2 network id of a HACA chain: `haca:<chain id>`. ValueError when the chain id is
    not a CAIP-2 reference (1-32 of letters, digits, '-' and '_')."""
    if not isinstance(chain_id, str) or not _REFERENCE.fullmatch(chain_id):
        raise ValueError(f"chain id {chain_id!r} is not a CAIP-2 reference (1-32 of [-_a-zA-Z0-9])")
    return f"{NETWORK_NAMESPACE}:{chain_id}"


def chain_id_of(network: str) -> str:
    """The chain id of a HACA CAIP-2 network id (the inverse of `caip2_network`); ValueError for
    a network of another namespace or a malformed one."""
    if not isinstance(network, str):
        raise ValueError(f"network must be a string, got {type(network).__name__}")
    namespace, sep, reference = network.partition(":")
    if not sep or namespace != NETWORK_NAMESPACE:
        raise ValueError(f"network {network!r} is not a HACA network ({NETWORK_NAMESPACE}:<chain id>)")
    if not _REFERENCE.fullmatch(reference):
        raise ValueError(f"network {network!r}: chain id is not a CAIP-2 reference (1-32 of [-_a-zA-Z0-9])")
    return reference
