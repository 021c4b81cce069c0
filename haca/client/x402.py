"""HACA's `haca-escrow` payment scheme for the official x402 (v2) Python client.

A HACA node answers an unpaid request 402 with a `PAYMENT-REQUIRED` header; the x402 client picks
an offer and asks the scheme registered for its network to sign it; the request is sent again
with a `PAYMENT-SIGNATURE` header. `HacaEscrowScheme` signs a per-request `PaymentAuthorization`
(EIP-712) for the offer's amount, which the node settles later against the client's escrow::

    from x402 import x402Client
    from x402.http.clients.httpx import x402HttpxClient

    from haca.client.config import ClientConfig, connect
    from haca.client.x402 import HacaEscrowScheme, offer_policy
    from haca.crypto.keys import PrivateKey
    from haca.types.x402 import caip2_network

    chain = connect(ClientConfig.load(home))  # a ChainClient: the model's price, read with proofs
    client = x402Client()  # the async client: the httpx transport awaits it
    client.register(caip2_network("haca-devnet"), HacaEscrowScheme(PrivateKey.from_hex(...), chain=chain))
    client.register_policy(offer_policy("iris", "vanilla"))  # the node's 402 lists every model and mode
    async with x402HttpxClient(client, timeout=30) as http:  # or wrapHttpxWithPayment(client, ...)
        body = {"model": "iris", "mode": "vanilla", "input": [[5.1, 3.5, 1.4, 0.2]]}
        answer = await http.post(f"{node_url}/v1/infer", json=body)

`x402Client().register("haca:*", …)` pays on any HACA chain (with `chain`: only on that chain).
The chain reads are blocking HTTP calls made inside the x402 client's (synchronous) scheme call.

Every payment is bounded, as `haca.Client`'s are (there is no unbounded default): with `chain` (a
`ChainClient`, or anything with its `chain_id` and `query_proven_value`), the scheme reads the
model's terms in effect at the quoted height with state proofs against light-client-verified,
recent headers, and refuses an amount above the most one request costs at those terms; with
`max_fee`, the caller's explicit maximum replaces that bound (to pay a node above the model's price).
A scheme with neither cannot be made. x402's default spend controls also cap each payment at "$1",
which for HACA's denom (`find_default_asset`: 18 decimals) is 10**18 base units: no bound on its
own. The amount signed is the offer's whole amount (the fee for the offer's `max_rows`); the node
charges the fee for the rows actually sent, at most that.

A node answers 402 before reading the body, so its requirements list every model and mode it
serves, and x402's default selector takes the first one it may pay: `offer_policy(model, mode)`
keeps only the offer the request is for (without it the node refuses the authorisation as one for
another model).

The x402 package is only needed to use this with an x402 client; this module imports it for types
only.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from haca.client.payment import PaymentRequiredError, chain_max_amount, chain_terms
from haca.crypto.keys import PrivateKey
from haca.types.payment import PaymentAuthorization
from haca.types.x402 import DENOM_DECIMALS, SCHEME, chain_id_of

if TYPE_CHECKING:
    from x402.interfaces import PaymentPayloadContext
    from x402.schemas import PaymentRequirements

_Requirement = TypeVar("_Requirement")


class ChainReader(Protocol):
    """What the scheme reads the chain through (ChainClient has both)."""

    chain_id: str

    def query_proven_value(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]: ...


class HacaEscrowScheme:
    """x402 `SchemeNetworkClient` (v2) for scheme `haca-escrow`: signs one request's
    `PaymentAuthorization` with `signer`, refusing an amount above `max_fee` when given, else above
    the most the model's terms on `chain` (read with proofs) allow, and above the x402 client's
    spend cap. ValueError without either `max_fee` or `chain`: no payment goes unbounded."""

    scheme = SCHEME

    def __init__(self, signer: PrivateKey, max_fee: int | None = None, chain: ChainReader | None = None) -> None:
        if max_fee is not None and max_fee < 0:
            raise ValueError("max_fee must not be negative")
        if max_fee is None and chain is None:
            raise ValueError(
                "HacaEscrowScheme needs a bound on what it pays: a chain to read the model's price from"
                " (with proofs), or an explicit max_fee"
            )
        self.signer = signer
        self.max_fee = max_fee
        self.chain = chain

    def create_payment_payload(
        self, requirements: PaymentRequirements, context: PaymentPayloadContext | None = None
    ) -> dict[str, Any]:
        """The inner payload `{"authorization", "signature"}` paying `requirements` (x402Client
        wraps it in a `PaymentPayload`); PaymentRequiredError when it is not paid."""
        auth = self.authorization(requirements, context)
        return {"authorization": auth.to_json(), "signature": "0x" + auth.sign(self.signer).hex()}

    def authorization(
        self, requirements: PaymentRequirements, context: PaymentPayloadContext | None = None
    ) -> PaymentAuthorization:
        """The authorisation `create_payment_payload` signs, after checking the amount is accepted."""
        if requirements.scheme != SCHEME:
            raise PaymentRequiredError(f"scheme {requirements.scheme!r} is not {SCHEME!r}")
        try:
            amount = _atomic(requirements.amount, "amount")
            extra = requirements.extra or {}
            auth = PaymentAuthorization(
                chain_id=chain_id_of(requirements.network),
                client=self.signer.address,
                node=str(requirements.pay_to).lower(),
                request_id="0x" + secrets.token_bytes(32).hex(),
                model_id=str(extra["model_id"]),
                mode=str(extra["mode"]),
                max_fee=amount,
                expiry=_atomic(extra["suggested_expiry"], "extra.suggested_expiry"),
            )
            # The same parsing the node applies: addresses, model id, mode, ranges.
            auth = PaymentAuthorization.from_json(auth.to_json())
            model, terms_height = str(extra["model"]), _atomic(extra["terms_height"], "extra.terms_height")
        except (KeyError, TypeError, ValueError) as exc:
            raise PaymentRequiredError(f"node's payment requirements are not usable: {exc!r}") from exc
        cap = getattr(context, "max_amount_per_payment", None) if context is not None else None
        if cap is not None and amount > _atomic(cap, "max_amount_per_payment"):
            raise PaymentRequiredError(f"node asks {amount}, more than the spend cap {cap}")
        if self.max_fee is not None:
            if amount > self.max_fee:
                raise PaymentRequiredError(f"node asks {amount}, more than the max fee {self.max_fee}")
        elif self.chain is not None:
            bound = self._chain_bound(self.chain, auth, model, terms_height)
            if amount > bound:
                raise PaymentRequiredError(
                    f"node asks {amount}, more than the model's terms on chain allow ({bound} for one request);"
                    " pass a max_fee to accept"
                )
        else:  # __init__ refuses this; a scheme changed since must still not pay unbounded
            raise PaymentRequiredError("no bound on what to pay: neither a max_fee nor a chain to read the price from")
        return auth

    @staticmethod
    def _chain_bound(chain: ChainReader, auth: PaymentAuthorization, model: str, terms_height: int) -> int:
        """The most one request on this model may cost at its terms in effect at the quoted
        height, read with proofs (the node must be registered on chain for the mode)."""
        if auth.chain_id != chain.chain_id:
            raise PaymentRequiredError(f"node asks to be paid on chain {auth.chain_id!r}, not {chain.chain_id!r}")
        manifest = chain_terms(chain, auth.model_id, model, auth.mode, auth.node, terms_height)
        return chain_max_amount(manifest)

    def find_default_asset(self, asset: str, network: str) -> dict[str, Any] | None:
        """HACA's denom on a HACA network, for x402's spend controls (its default "$1" cap is one
        whole token: 10**DENOM_DECIMALS base units); None for any other network."""
        try:
            chain_id_of(network)
        except ValueError:
            return None
        if not isinstance(asset, str) or not asset:
            return None
        return {"asset": asset, "name": f"HACA {asset}", "symbol": asset.upper(), "decimals": DENOM_DECIMALS}


def offer_policy(model: str, mode: str) -> Callable[[int, Sequence[_Requirement]], list[_Requirement]]:
    """An x402 payment policy (`x402Client.register_policy`) keeping only HACA offers for `model`
    (its name or its id) in `mode`; other schemes' requirements are left as they are."""

    def policy(version: int, requirements: Sequence[_Requirement]) -> list[_Requirement]:
        kept = []
        for requirement in requirements:
            if getattr(requirement, "scheme", None) != SCHEME:
                kept.append(requirement)
                continue
            extra = getattr(requirement, "extra", None) or {}
            if model in (extra.get("model"), extra.get("model_id")) and extra.get("mode") == mode:
                kept.append(requirement)
        return kept

    return policy


def _atomic(value: Any, field: str) -> int:
    """A non-negative integer amount given as decimal digits (or an int)."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an integer amount")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ValueError(f"{field}: expected an integer amount, got {value!r}")
    if number < 0:
        raise ValueError(f"{field}: must not be negative")
    return number
