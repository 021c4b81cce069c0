"""Proven means recent: a proven answer is accepted only for a state at most `max_proof_lag` blocks
behind the latest header the client verified. The attack: an RPC pins every proven query to an
old height and answers a balance since spent, with that height's real header; every signature and
proof checks. The RPC is a loopback fake with real signed headers and trie proofs (chainfake)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from haca.chain.modules.bank.keeper import balance_key
from haca.client.chain import DEFAULT_MAX_PROOF_LAG, ChainClient
from haca.client.errors import StaleProof
from haca.crypto.keys import PrivateKey
from tests.unit.client.chainfake import CHAIN_ID, VALIDATORS, FakeChain, RpcServer

ALICE = PrivateKey.from_seed("freshness alice").address
SPENT_AT = 10  # alice held 1000 until height 10, and nothing since


def balances(height: int) -> dict[bytes, bytes]:
    return {balance_key(ALICE): b"1000" if height < SPENT_AT else b"0"}


def balance_answer(raw: bytes) -> dict[str, Any]:
    return {"address": ALICE, "balance": raw.decode() or "0"}


@pytest.fixture
def serve() -> Iterator[Callable[..., RpcServer]]:
    started: list[RpcServer] = []

    def start(**settings: Any) -> RpcServer:
        chain = FakeChain(balances, {"/bank/balance": (balance_key(ALICE), balance_answer)}, **settings)
        started.append(RpcServer(chain))
        return started[-1]

    yield start
    for server in started:
        server.close()


def client(*urls: str, lag: int = DEFAULT_MAX_PROOF_LAG) -> ChainClient:
    return ChainClient(list(urls), CHAIN_ID, VALIDATORS, max_proof_lag=lag)


def test_an_rpc_pinning_proven_queries_to_an_old_height_is_refused(serve: Callable[..., RpcServer]) -> None:
    pinned = serve(answer_height=5)  # tip 20: its latest commit is 21, verified by the client
    with pytest.raises(StaleProof) as refused:
        client(pinned.url).proven_balance(ALICE)  # the state of height 5 still shows 1000
    assert refused.value.code == "proof_stale"
    assert (refused.value.height, refused.value.latest) == (5, 21)


def test_an_honest_rpc_answers_the_current_balance(serve: Callable[..., RpcServer]) -> None:
    reader = client(serve().url)
    assert reader.proven_balance(ALICE) == 0
    assert reader.latest_verified_height == 21


def test_an_answer_within_the_window_passes_and_one_block_older_does_not(serve: Callable[..., RpcServer]) -> None:
    at_the_floor = serve(answer_height=21 - DEFAULT_MAX_PROOF_LAG)
    assert client(at_the_floor.url).proven_balance(ALICE) == 0  # height 16: spent
    below = serve(answer_height=20 - DEFAULT_MAX_PROOF_LAG)
    with pytest.raises(StaleProof):
        client(below.url).proven_balance(ALICE)
    assert client(below.url, lag=DEFAULT_MAX_PROOF_LAG + 1).proven_balance(ALICE) == 0  # a wider window


def test_an_rpc_serving_an_old_commit_as_its_latest_cannot_lower_what_the_client_verified(
    serve: Callable[..., RpcServer],
) -> None:
    server = serve()
    reader = client(server.url)
    assert reader.proven_balance(ALICE) == 0
    server.chain.latest_commit, server.chain.answer_height = 6, 5  # now it pretends height 6 is the latest
    with pytest.raises(StaleProof):
        reader.proven_balance(ALICE)


def test_the_height_verified_through_one_endpoint_bounds_the_answers_of_another(
    serve: Callable[..., RpcServer],
) -> None:
    honest, liar = serve(), serve(latest_commit=6, answer_height=5)
    reader = client(honest.url, liar.url)
    assert reader.proven_balance(ALICE) == 0
    honest.close()  # the client fails over to the endpoint that tells an old story consistently
    with pytest.raises(StaleProof):
        reader.proven_balance(ALICE)
    assert reader.rpc.url == liar.url


def test_proven_keys_queries_are_bounded_too(serve: Callable[..., RpcServer]) -> None:
    pinned = serve(answer_height=5)
    with pytest.raises(StaleProof):
        client(pinned.url).query_proven_keys("/bank/balance", ALICE.encode())


def test_the_proof_lag_a_client_allows_comes_from_its_config(tmp_path):
    from haca.client.config import ClientConfig, connect

    ClientConfig("c", ["http://127.0.0.1:1"], max_proof_lag=2).save(tmp_path)
    chain = connect(ClientConfig.load(tmp_path))
    try:
        assert chain.max_proof_lag == 2
    finally:
        chain.close()
    ClientConfig("c", ["http://127.0.0.1:1"]).save(tmp_path)
    assert ClientConfig.load(tmp_path).max_proof_lag == 5  # the default when a config names none
