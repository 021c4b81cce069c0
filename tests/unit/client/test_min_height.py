"""After a deposit the SDK names its block with every payment (X-HACA-Min-Height), so a node whose
RPC is a block behind reads the escrow again from that block instead of answering 402."""

from __future__ import annotations

from typing import Any

from haca.client.chain import TxOutcome
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.types.payment import MIN_HEIGHT_HEADER

NODE = "0x" + "d1" * 20


class DepositChain:
    chain_id = "haca-test"

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_msgs(self, key: PrivateKey, msgs: tuple[Any, ...], wait: bool = True) -> TxOutcome:
        self.sent.append(msgs)
        return TxOutcome(hash="AB" * 32, height=41 + len(self.sent), code=0, log="", events=[])

    def close(self) -> None:
        pass


def test_a_deposit_sets_the_min_height_sent_with_payments_and_a_withdrawal_does_not() -> None:
    chain = DepositChain()
    client = Client("http://node.test", PrivateKey.from_seed("min height client"), chain, node_address=NODE)  # type: ignore[arg-type]
    try:
        assert client._payment_headers("pay") == {"X-PAYMENT": "pay"}  # nothing deposited yet
        client.deposit(1000)
        assert client._payment_headers("pay") == {"X-PAYMENT": "pay", MIN_HEIGHT_HEADER: "42"}
        client.withdraw(10)  # a withdrawal lowers the escrow: no reason to wait for its block
        assert client.min_height == 42
    finally:
        client.close()
