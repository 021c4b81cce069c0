"""The light client across validator-set changes, on a synthetic chain whose headers are signed
the way CometBFT signs them: set A (heights 1-10), set B (11-20, half of A), set C (21-, none of
B): skipping from the genesis anchor to 30 needs bisection; a set that lost its power cannot sign
its way past a trusted block that names its successors; backwards, only the hash chain counts."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from haca.client import light
from haca.client.chain import ChainClient
from haca.client.errors import ProofInvalid
from haca.client.light import HeaderRefused, LightBlock, LightClient, TrustedValidator, TrustExpired
from haca.crypto.hashing import sha256
from tests.unit.client.chainfake import RpcServer

CHAIN_ID = "haca-light"
KEYS = [Ed25519PrivateKey.from_private_bytes(sha256(f"light validator {i}".encode())) for i in range(10)]
SET_A, SET_B, SET_C = (0, 1, 2, 3), (2, 3, 4, 5), (6, 7, 8, 9)
T0 = int(time.time()) - 10_000  # genesis time (seconds): in the past, for ChainClient (real clock)


def set_at(height: int) -> tuple[int, ...]:
    return SET_A if height <= 10 else SET_B if height <= 20 else SET_C


def validator(i: int) -> TrustedValidator:
    pub = KEYS[i].public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return TrustedValidator(sha256(pub)[:20], pub, 10)


def validators(members: tuple[int, ...]) -> tuple[TrustedValidator, ...]:
    return tuple(validator(i) for i in members)


def rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ".25Z"


def make_block(
    height: int,
    last_hash: bytes,
    members: tuple[int, ...],
    next_members: tuple[int, ...],
    signers: tuple[int, ...] | None = None,
    app_hash: bytes | None = None,
    chain_id: str = CHAIN_ID,
) -> LightBlock:
    tag = lambda text: sha256(f"{height} {text}".encode()).hex().upper()  # noqa: E731
    header = {
        "version": {"block": "11", "app": "1"},
        "chain_id": chain_id,
        "height": str(height),
        "time": rfc3339(T0 + height),
        "last_block_id": {"hash": last_hash.hex().upper(), "parts": {"total": 1, "hash": tag("parts")}},
        "last_commit_hash": tag("commit"),
        "data_hash": tag("data"),
        "validators_hash": light.validator_set_hash(list(validators(members))).hex().upper(),
        "next_validators_hash": light.validator_set_hash(list(validators(next_members))).hex().upper(),
        "consensus_hash": tag("consensus"),
        "app_hash": (app_hash or sha256(f"state {height}".encode())).hex().upper(),
        "last_results_hash": tag("results"),
        "evidence_hash": "",
        "proposer_address": validator(members[0]).address.hex().upper(),
    }
    block_id = {"hash": light.hash_header(header).hex().upper(), "parts": {"total": 1, "hash": tag("block parts")}}
    signatures = []
    for i in members if signers is None else signers:
        message = light.precommit_sign_bytes(chain_id, height, 0, block_id, header["time"])
        signatures.append(
            {
                "block_id_flag": 2,
                "validator_address": validator(i).address.hex().upper(),
                "timestamp": header["time"],
                "signature": base64.b64encode(KEYS[i].sign(message)).decode(),
            }
        )
    commit = {"height": str(height), "round": 0, "block_id": block_id, "signatures": signatures}
    return LightBlock({"header": header, "commit": commit}, validators(members), validators(next_members))


def honest_chain(tip: int) -> dict[int, LightBlock]:
    blocks: dict[int, LightBlock] = {}
    last = b""
    for h in range(1, tip + 1):
        blocks[h] = make_block(h, last, set_at(h), set_at(h + 1))
        last = blocks[h].hash
    return blocks


@dataclass
class Rpc:
    """Serves light blocks: the honest chain, with some heights replaced (a lying RPC)."""

    blocks: dict[int, LightBlock]
    fetched: list[int] = field(default_factory=list)

    def __call__(self, height: int) -> LightBlock:
        self.fetched.append(height)
        return self.blocks[height]


def client(rpc: Rpc, now: int = T0 + 100, trusting_period: int = 3600, anchor: int = 1) -> LightClient:
    clock: Callable[[], float] = lambda: now  # noqa: E731
    return LightClient(CHAIN_ID, rpc.blocks[anchor], rpc, trusting_period, clock)


def test_a_header_two_set_changes_ahead_of_the_anchor_is_verified_by_bisection():
    rpc = Rpc(honest_chain(40))
    lc = client(rpc)
    block = lc.verified(30)
    assert block.app_hash == sha256(b"state 30") and lc.latest.height == 30
    assert rpc.fetched[0] == 30 and len(rpc.fetched) > 2  # the set at 1 could not vouch for 30 directly
    assert 20 in rpc.fetched or 21 in rpc.fetched  # bisection reached the change from B to C
    before = len(rpc.fetched)
    assert lc.verified(35).height == 35 and len(rpc.fetched) == before + 1  # C vouches for 35 at once


def test_a_forged_header_signed_by_a_set_that_lost_its_power_is_refused():
    """Set A's keys (no power since height 11) sign a header 35 of their own, and the RPC serves
    a whole forged chain 31-35 by them. The client, trusting 30 (whose next set is C), refuses it."""
    rpc = Rpc(honest_chain(40))
    lc = client(rpc)
    lc.verified(30)
    forged = dict(rpc.blocks)
    last = rpc.blocks[30].hash
    for h in range(31, 36):
        forged[h] = make_block(h, last, SET_A, SET_A, app_hash=sha256(b"mallory's state"))
        last = forged[h].hash
    lying = Rpc(forged)
    lc.fetch = lying
    with pytest.raises(HeaderRefused, match="header 31's validators are not the next of trusted 30"):
        lc.verified(35)
    assert lc.latest.height == 30
    lc.fetch = rpc
    assert lc.verified(35).app_hash == sha256(b"state 35")  # the legitimate one, signed by C


def test_from_the_anchor_alone_a_set_with_no_overlap_cannot_skip_even_by_bisection_without_the_real_chain():
    """A forged chain 2-30 signed by keys the anchor's set never named is refused at the first step."""
    blocks = honest_chain(40)
    forged = {1: blocks[1]}
    last = blocks[1].hash
    for h in range(2, 31):
        forged[h] = make_block(h, last, SET_C, SET_C)
        last = forged[h].hash
    with pytest.raises(HeaderRefused, match="header 2's validators are not the next of trusted 1"):
        client(Rpc(forged)).verified(30)


def test_below_the_anchor_only_the_hash_chain_counts():
    """Anchored at 30 (a trusted height and hash, as an operator gives one): header 25 is reached
    down the hash chain; a header 26 with another state is refused whoever signed it."""
    rpc = Rpc(honest_chain(40))
    lc = client(rpc, anchor=30)
    assert lc.verified(25).app_hash == sha256(b"state 25")
    assert rpc.fetched == [29, 28, 27, 26, 25]
    forged = dict(rpc.blocks)
    forged[26] = make_block(26, rpc.blocks[25].hash, SET_C, SET_C, app_hash=sha256(b"mallory's state"))
    with pytest.raises(HeaderRefused, match="header 26 is not the one header 27 follows"):
        client(Rpc(forged), anchor=30).verified(25)


def test_another_header_at_a_trusted_height_is_refused():
    rpc = Rpc(honest_chain(40))
    lc = client(rpc)
    lc.verified(30)
    other = make_block(30, rpc.blocks[29].hash, SET_C, SET_C, app_hash=sha256(b"mallory's state"))
    with pytest.raises(HeaderRefused, match="header 30 is not the header trusted at that height"):
        lc.verify(other)


def test_a_commit_of_exactly_two_thirds_of_its_own_set_is_refused():
    blocks = honest_chain(3)
    # 3 of 4 equal validators is 3/4 > 2/3: accepted; 2 of 4 is not more than 2/3
    blocks[2] = make_block(2, blocks[1].hash, SET_A, SET_A, signers=SET_A[:2])
    with pytest.raises(HeaderRefused, match="signed by 20 of its 40 voting power, not more than 2/3"):
        client(Rpc(blocks)).verified(2)


def test_a_header_of_another_chain_is_refused():
    blocks = honest_chain(3)
    blocks[3] = make_block(3, blocks[2].hash, SET_A, SET_A, chain_id="other-chain")
    with pytest.raises(HeaderRefused, match="header is for chain 'other-chain'"):
        client(Rpc(blocks)).verified(3)


def test_no_skip_from_a_trusted_header_older_than_the_trusting_period():
    rpc = Rpc(honest_chain(40))
    with pytest.raises(TrustExpired, match="older than the trusting period"):
        client(rpc, now=T0 + 1 + 3600).verified(30)


def test_validators_that_do_not_hash_to_the_header_are_refused():
    blocks = honest_chain(12)
    good = blocks[12]
    blocks[12] = LightBlock(good.signed_header, validators(SET_A), good.next_validators)
    with pytest.raises(HeaderRefused, match="the validators given are not the header's validators_hash"):
        client(Rpc(blocks)).verified(12)


def test_the_anchor_must_be_well_formed():
    blocks = honest_chain(2)
    bad = make_block(1, b"", SET_A, SET_A, signers=SET_A[:1])
    with pytest.raises(HeaderRefused):
        LightClient(CHAIN_ID, bad, Rpc(blocks), 3600, lambda: T0)


# --- ChainClient: the light client behind every proven read ----------------------------------------


class SyntheticRpc:
    """The synthetic chain above as CometBFT JSON-RPC (`commit`, `validators`), for ChainClient."""

    def __init__(self, blocks: dict[int, LightBlock]) -> None:
        self.blocks = blocks
        self.tip = max(blocks)

    def handle(self, method: str, params: dict[str, Any]) -> Any:
        height = int(params.get("height") or self.tip)
        if method == "commit":
            return {"signed_header": self.blocks[height].signed_header, "canonical": True}
        if method == "validators":
            members = set_at(height)
            return {"validators": [rpc_validator(i) for i in members], "count": str(len(members))}
        raise LookupError(f"method {method} not found")


def rpc_validator(i: int) -> dict[str, Any]:
    v = validator(i)
    key = {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(v.pub_key).decode()}
    return {"address": v.address.hex().upper(), "pub_key": key, "voting_power": str(v.power)}


@pytest.fixture
def synthetic() -> Iterator[Callable[[dict[int, LightBlock]], str]]:
    servers: list[RpcServer] = []

    def serve(blocks: dict[int, LightBlock]) -> str:
        servers.append(RpcServer(SyntheticRpc(blocks)))  # type: ignore[arg-type]
        return servers[-1].url

    yield serve
    for server in servers:
        server.close()


def test_a_chain_client_configured_with_the_genesis_set_verifies_headers_after_two_set_changes(synthetic):
    url = synthetic(honest_chain(30))
    chain = ChainClient([url], CHAIN_ID, [rpc_validator(i) for i in SET_A], trusting_period=10**10)
    assert chain.verify_latest() == 30  # anchored at header 1 (set A), bisected through B to C
    assert chain.app_hash_after(24) == sha256(b"state 25")


def test_a_chain_client_refuses_a_latest_header_forged_by_a_set_it_does_not_trust(synthetic):
    blocks = honest_chain(30)
    blocks[30] = make_block(30, blocks[29].hash, (0, 1, 8, 9), (0, 1, 8, 9))  # half of A with strangers
    chain = ChainClient([synthetic(blocks)], CHAIN_ID, [rpc_validator(i) for i in SET_A], trusting_period=10**10)
    with pytest.raises(ProofInvalid, match="header 30"):
        chain.verify_latest()


def test_an_rpc_answering_another_height_than_asked_is_refused_not_followed_for_ever():
    blocks = honest_chain(40)
    lying = {h: blocks[30] for h in range(2, 41)}  # every answer is header 30
    lying[1] = blocks[1]
    with pytest.raises(HeaderRefused, match="asked for header 15, the RPC answered header 30"):
        client(Rpc(lying)).verified(30)


def test_an_adjacent_header_must_follow_the_trusted_one_by_hash():
    blocks = honest_chain(3)
    blocks[2] = make_block(2, sha256(b"another parent"), SET_A, SET_A)
    with pytest.raises(HeaderRefused, match="header 2 does not follow trusted header 1"):
        client(Rpc(blocks)).verified(2)


def test_a_signature_that_does_not_verify_is_not_counted_and_the_rest_still_carry_the_header():
    """CometBFT accepts some signatures (ZIP-215) OpenSSL does not: one odd signature must not make
    a header unverifiable while more than 2/3 of the power signed it validly."""
    blocks = honest_chain(3)
    commit = blocks[3].signed_header["commit"]
    raw = bytearray(base64.b64decode(commit["signatures"][0]["signature"]))
    raw[3] ^= 1
    commit["signatures"][0]["signature"] = base64.b64encode(bytes(raw)).decode()
    assert client(Rpc(blocks)).verified(3).app_hash == sha256(b"state 3")  # 3 of 4 still signed
    raw = bytearray(base64.b64decode(commit["signatures"][1]["signature"]))
    raw[3] ^= 1
    commit["signatures"][1]["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(HeaderRefused, match="signed by 20 of its 40 voting power"):
        client(Rpc(blocks)).verified(3)


def test_a_chain_client_anchors_at_a_configured_trusted_height_and_refuses_a_wrong_hash(synthetic):
    blocks = honest_chain(30)
    url = synthetic(blocks)
    genesis_set = [rpc_validator(i) for i in SET_A]
    trusted = ChainClient([url], CHAIN_ID, genesis_set, trust_height=25, trust_hash=blocks[25].hash.hex())
    assert trusted.verify_latest() == 30 and trusted.app_hash_after(19) == sha256(b"state 20")  # below: hash chain
    wrong = ChainClient([url], CHAIN_ID, genesis_set, trust_height=25, trust_hash="00" * 32)
    with pytest.raises(ProofInvalid, match="does not hash to the configured trust_hash"):
        wrong.verify_latest()


def test_a_chain_client_whose_genesis_is_older_than_the_trusting_period_needs_a_trusted_height(synthetic):
    url = synthetic(honest_chain(30))
    old = ChainClient([url], CHAIN_ID, [rpc_validator(i) for i in SET_A], trusting_period=60)
    with pytest.raises(ProofInvalid, match="older than the trusting period"):
        old.verify_latest()


def test_headers_a_fraction_of_a_second_apart_are_in_order():
    """Blocks come faster than one a second: time is compared to the nanosecond."""
    blocks = honest_chain(3)
    for h, fraction in ((2, "100000000"), (3, "200000000")):
        header = blocks[h].signed_header["header"]
        header["time"] = rfc3339(T0 + 2).replace(".25Z", f".{fraction}Z")
    relinked = {1: blocks[1]}
    for h in (2, 3):  # re-sign with the new times
        old = blocks[h]
        fresh = make_block(h, relinked[h - 1].hash, SET_A, SET_A)
        fresh.signed_header["header"]["time"] = old.signed_header["header"]["time"]
        relinked[h] = resign(fresh)
    assert client(Rpc(relinked)).verified(3).height == 3


def resign(block: LightBlock) -> LightBlock:
    """The block's header signed again by its set (after a test changed the header)."""
    header = block.signed_header["header"]
    height = int(header["height"])
    block_id = {"hash": light.hash_header(header).hex().upper(), "parts": {"total": 1, "hash": "AB" * 32}}
    signatures = []
    for v in block.validators:
        i = next(j for j in range(len(KEYS)) if validator(j).address == v.address)
        message = light.precommit_sign_bytes(CHAIN_ID, height, 0, block_id, header["time"])
        signatures.append(
            {
                "block_id_flag": 2,
                "validator_address": v.address.hex().upper(),
                "timestamp": header["time"],
                "signature": base64.b64encode(KEYS[i].sign(message)).decode(),
            }
        )
    commit = {"height": str(height), "round": 0, "block_id": block_id, "signatures": signatures}
    return LightBlock({"header": header, "commit": commit}, block.validators, block.next_validators)
