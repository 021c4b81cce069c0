"""Light-client checks of CometBFT headers: the header hash, and a commit signed by more than
2/3 of a trusted validator set's voting power (ed25519 over canonical precommit sign bytes).

This is what lets a client trust an app hash, and through it a state proof, without trusting
the RPC node that served them.

`LightClient` (below) follows the validator set as it changes: skipping verification with
bisection forwards, hash-linked verification backwards (CometBFT's light-client rules). It holds
*trusted light blocks* — a signed header with the validator set of its height and of the next —
starting from one anchor (genesis, or a height and hash the operator trusts). It never trusts a
header on its own word:

- **forwards** from the closest trusted block T below a header H: adjacent (H = T + 1) when H's
  validators are T's next validators; otherwise (skipping) when validators holding more than
  `trust_level` (1/3) of T's next set's power signed H's commit. In both cases more than 2/3 of
  H's own validators' power must have signed it. A skip that lacks the 1/3 is bisected: the
  header halfway is verified first, then H from it. A set that has since lost its power cannot
  sign its way forward from a block that names its successors.
- **backwards** (H below every trusted block, e.g. below a recent anchor): header by header down
  the `last_block_id` hash chain from the lowest trusted block — no signature is needed.
- **trusting period**: a trusted block older than `trusting_period` seconds (which must be below
  the unbonding period: after it, a set's stake may be gone and its signatures worth nothing) is
  not used to skip from; a client whose every trusted block has expired must be given a new anchor.

Headers and validator sets come from `fetch(height) -> LightBlock` (any RPC, trusted by no one).
"""

from __future__ import annotations

import base64
import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tendermint.crypto import keys_pb2
from tendermint.types import canonical_pb2, types_pb2, validator_pb2

from haca.client.errors import HacaError
from haca.crypto.merkle import merkle_root  # RFC 6962, as CometBFT's merkle.HashFromByteSlices
from haca.types.encoding import encode_uvarint

BLOCK_ID_FLAG_COMMIT = 2
# Header fields after last_block_id, in Header.Hash() order; each is a gogoproto BytesValue.
_HASH_FIELDS = (
    "last_commit_hash",
    "data_hash",
    "validators_hash",
    "next_validators_hash",
    "consensus_hash",
    "app_hash",
    "last_results_hash",
    "evidence_hash",
    "proposer_address",
)


class LightClientError(HacaError):
    code = "light_client"


@dataclass(frozen=True)
class TrustedValidator:
    address: bytes
    pub_key: bytes  # ed25519, 32 bytes
    power: int


def validators_from_rpc(items: list[dict[str, Any]]) -> list[TrustedValidator]:
    out = []
    for v in items:
        if v["pub_key"]["type"] != "tendermint/PubKeyEd25519":
            raise LightClientError(f"unsupported validator key type {v['pub_key']['type']}")
        out.append(
            TrustedValidator(
                bytes.fromhex(v["address"]), base64.b64decode(v["pub_key"]["value"]), int(v["voting_power"])
            )
        )
    return out


def verify_signed_header(signed_header: dict[str, Any], validators: list[TrustedValidator], chain_id: str) -> bytes:
    """Check a `commit` RPC answer against a trusted validator set; return the header's app hash."""
    header, commit = signed_header["header"], signed_header["commit"]
    if header["chain_id"] != chain_id:
        raise LightClientError(f"header is for chain {header['chain_id']!r}, not {chain_id!r}")
    if header["validators_hash"].lower() != validator_set_hash(validators).hex():
        raise LightClientError("header's validators_hash does not match the trusted validator set")
    header_hash = hash_header(header)
    if commit["block_id"]["hash"].lower() != header_hash.hex() or commit["height"] != header["height"]:
        raise LightClientError("commit is not for this header")
    total = sum(v.power for v in validators)
    signed_power = commit_power(commit, validators, chain_id)
    if signed_power * 3 <= total * 2:
        raise LightClientError(f"commit signed by {signed_power} of {total} voting power, not more than 2/3")
    return bytes.fromhex(header["app_hash"])


def commit_power(commit: dict[str, Any], validators: list[TrustedValidator], chain_id: str) -> int:
    """The voting power of `validators` (matched by address, each counted once) whose precommit
    for the commit's block is in it and verifies. A signature that does not verify here is not
    counted (never an error): CometBFT checks votes with ZIP-215's rules, a little wider than
    OpenSSL's, so one validator's odd-but-valid key must not make every header unverifiable."""
    by_address = {v.address: v for v in validators}
    signed_power = 0
    seen: set[bytes] = set()
    for sig in commit["signatures"]:
        if sig["block_id_flag"] != BLOCK_ID_FLAG_COMMIT:
            continue
        address = bytes.fromhex(sig["validator_address"])
        validator = by_address.get(address)
        if validator is None or address in seen:
            continue
        seen.add(address)
        message = precommit_sign_bytes(
            chain_id, int(commit["height"]), int(commit["round"]), commit["block_id"], sig["timestamp"]
        )
        try:
            Ed25519PublicKey.from_public_bytes(validator.pub_key).verify(base64.b64decode(sig["signature"]), message)
        except (InvalidSignature, ValueError):
            continue  # not counted: the rest must still carry the power
        signed_power += validator.power
    return signed_power


def precommit_sign_bytes(chain_id: str, height: int, round_: int, block_id: dict[str, Any], timestamp: str) -> bytes:
    seconds, nanos = parse_rfc3339_nanos(timestamp)
    vote = canonical_pb2.CanonicalVote(
        type=types_pb2.SIGNED_MSG_TYPE_PRECOMMIT, height=height, round=round_, chain_id=chain_id
    )
    vote.block_id.hash = bytes.fromhex(block_id["hash"])
    vote.block_id.part_set_header.total = int(block_id["parts"]["total"])
    vote.block_id.part_set_header.hash = bytes.fromhex(block_id["parts"]["hash"])
    vote.timestamp.seconds, vote.timestamp.nanos = seconds, nanos
    body = vote.SerializeToString()
    return encode_uvarint(len(body)) + body


def hash_header(header: dict[str, Any]) -> bytes:
    """CometBFT's Header.Hash(): a simple Merkle tree over the proto encoding of each field."""
    version = types_pb2.Header().version
    version.block, version.app = int(header["version"]["block"]), int(header["version"].get("app", 0))
    seconds, nanos = parse_rfc3339_nanos(header["time"])
    ts = types_pb2.Header().time
    ts.seconds, ts.nanos = seconds, nanos
    last = types_pb2.BlockID(hash=bytes.fromhex(header["last_block_id"]["hash"]))
    last.part_set_header.total = int(header["last_block_id"]["parts"]["total"])
    last.part_set_header.hash = bytes.fromhex(header["last_block_id"]["parts"]["hash"])
    fields = [
        version.SerializeToString(),
        _bytes_value(header["chain_id"].encode()),
        _int64_value(int(header["height"])),
        ts.SerializeToString(),
        last.SerializeToString(),
        *(_bytes_value(bytes.fromhex(header[name])) for name in _HASH_FIELDS),
    ]
    return merkle_root(fields)


def validator_set_hash(validators: list[TrustedValidator]) -> bytes:
    leaves = []
    for v in sorted(validators, key=lambda v: (-v.power, v.address)):  # CometBFT's canonical order
        simple = validator_pb2.SimpleValidator(pub_key=keys_pb2.PublicKey(ed25519=v.pub_key), voting_power=v.power)
        leaves.append(simple.SerializeToString())
    return merkle_root(leaves)


def parse_rfc3339_nanos(text: str) -> tuple[int, int]:
    """Seconds and nanoseconds of an RFC 3339 UTC time with up to 9 fractional digits."""
    main, _, frac = text.rstrip("Z").partition(".")
    moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(moment.timestamp()), int((frac or "0").ljust(9, "0")[:9])


def _bytes_value(data: bytes) -> bytes:  # gogoproto BytesValue/StringValue: field 1, omitted when empty
    return b"\x0a" + encode_uvarint(len(data)) + data if data else b""


def _int64_value(value: int) -> bytes:
    return b"\x08" + encode_uvarint(value) if value else b""


# --- following validator-set changes -------------------------------------------------------------

TRUST_LEVEL = (1, 3)  # of the trusted next set's power that must sign a skipped-to header
MAX_CLOCK_DRIFT = 10  # seconds a header's time may be ahead of the client's clock
MAX_BACKWARD = 1024  # headers walked back down the hash chain for one verification
MAX_TRUSTED = 4096  # trusted light blocks kept (the anchor always)


class HeaderRefused(LightClientError):
    """The header cannot be connected to a trusted block (forged, or signed by too little power)."""


class TrustExpired(LightClientError):
    """Every trusted block is older than the trusting period: the client needs a new anchor."""


@dataclass(frozen=True)
class LightBlock:
    signed_header: dict[str, Any]  # a `commit` RPC answer: {"header", "commit"}
    validators: tuple[TrustedValidator, ...]  # the set at its height
    next_validators: tuple[TrustedValidator, ...]  # the set at height + 1

    @property
    def header(self) -> dict[str, Any]:
        return dict(self.signed_header["header"])

    @property
    def height(self) -> int:
        return int(self.header["height"])

    @property
    def time(self) -> int:
        """The header's time, in whole seconds."""
        return parse_rfc3339_nanos(self.header["time"])[0]

    @property
    def time_ns(self) -> int:
        """The header's time in nanoseconds (blocks a fraction of a second apart differ here)."""
        seconds, nanos = parse_rfc3339_nanos(self.header["time"])
        return seconds * 1_000_000_000 + nanos

    @property
    def hash(self) -> bytes:
        return hash_header(self.header)

    @property
    def app_hash(self) -> bytes:
        return bytes.fromhex(self.header["app_hash"])


def check_sets(block: LightBlock, chain_id: str) -> None:
    """The block's chain is ours and the sets given with it are the ones its header hashes name."""
    header = block.header
    if header["chain_id"] != chain_id:
        raise HeaderRefused(f"header is for chain {header['chain_id']!r}, not {chain_id!r}")
    if header["validators_hash"].lower() != validator_set_hash(list(block.validators)).hex():
        raise HeaderRefused(f"header {block.height}: the validators given are not the header's validators_hash")
    if header["next_validators_hash"].lower() != validator_set_hash(list(block.next_validators)).hex():
        raise HeaderRefused(f"header {block.height}: the next validators given are not its next_validators_hash")


def check_light_block(block: LightBlock, chain_id: str) -> None:
    """The block is well formed (`check_sets`), its commit is for this header, and more than 2/3
    of its own validators' power signed it."""
    check_sets(block, chain_id)
    header, commit = block.header, block.signed_header["commit"]
    if commit["block_id"]["hash"].lower() != block.hash.hex() or str(commit["height"]) != str(header["height"]):
        raise HeaderRefused(f"header {block.height}: the commit is not for this header")
    signed, total = signed_power(block, block.validators, chain_id)
    if signed * 3 <= total * 2:
        raise HeaderRefused(f"header {block.height}: signed by {signed} of its {total} voting power, not more than 2/3")


def signed_power(block: LightBlock, validators: tuple[TrustedValidator, ...], chain_id: str) -> tuple[int, int]:
    """(power of `validators` whose valid precommit for the block is in its commit, their total)."""
    try:
        signed = commit_power(block.signed_header["commit"], list(validators), chain_id)
    except LightClientError as exc:
        raise HeaderRefused(f"header {block.height}: {exc}") from exc
    return signed, sum(v.power for v in validators)


class NotEnoughTrust(HeaderRefused):
    """A skip the trusted set does not vouch for with more than `trust_level`: bisect."""


class LightClient:
    def __init__(
        self,
        chain_id: str,
        anchor: LightBlock,
        fetch: Callable[[int], LightBlock],
        trusting_period: int,
        clock: Callable[[], float],
    ) -> None:
        """`anchor`: a block trusted by configuration (checked for form, not for trust). `fetch`:
        the light block at a height, from any RPC. `trusting_period`: seconds, below the chain's
        unbonding period. `clock`: the time now, in seconds."""
        check_light_block(anchor, chain_id)
        if anchor.time + trusting_period <= clock():
            raise TrustExpired(
                f"the anchor, header {anchor.height}, is older than the trusting period ({trusting_period}s):"
                " give the client a recent trusted height and hash (config trust_height, trust_hash)"
            )
        self.chain_id, self.fetch, self.trusting_period, self.clock = chain_id, fetch, trusting_period, clock
        self._trusted: dict[int, LightBlock] = {anchor.height: anchor}
        self._heights: list[int] = [anchor.height]  # sorted
        self._anchor = anchor.height
        self._lock = threading.Lock()

    @property
    def latest(self) -> LightBlock:
        with self._lock:
            return self._trusted[self._heights[-1]]

    def verified(self, height: int) -> LightBlock:
        """The light block at `height`, fetched and verified from the trusted blocks (remembered)."""
        with self._lock:
            known = self._trusted.get(height)
            lowest = self._heights[0]
        if known is not None:
            return known
        if height < lowest:
            return self._backward(self._trusted[lowest], height)
        return self.verify(self._fetch(height))

    def _fetch(self, height: int) -> LightBlock:
        """The light block at `height` from the RPC, which must be that height's (an RPC answering
        another would make bisection go round for ever)."""
        block = self.fetch(height)
        if block.height != height:
            raise HeaderRefused(f"asked for header {height}, the RPC answered header {block.height}")
        return block

    def verify(self, block: LightBlock) -> LightBlock:
        """`block`, fetched by the caller, verified: forwards from the closest trusted block below
        it, else backwards from the lowest one; another header at a trusted height is refused."""
        with self._lock:
            known = self._trusted.get(block.height)
            heights = list(self._heights)
        if known is None:
            below = bisect.bisect_left(heights, block.height)
            if below:
                return self._forward(self._trusted[heights[below - 1]], block)
            known = self._backward(self._trusted[heights[0]], block.height)
        if known.hash != block.hash:
            raise HeaderRefused(f"header {block.height} is not the header trusted at that height")
        return known

    # --- forwards ---------------------------------------------------------------------------------

    def _forward(self, trusted: LightBlock, target: LightBlock) -> LightBlock:
        """Verify `target` from `trusted`, bisecting when the trusted set cannot vouch for it."""
        now = self.clock()
        if trusted.time + self.trusting_period <= now:
            raise TrustExpired(
                f"the trusted header {trusted.height} is older than the trusting period"
                f" ({self.trusting_period}s): give the client a new trusted height and hash"
            )
        pending = [target]
        while pending:
            block = pending[-1]
            try:
                self._verify_step(trusted, block, now)
            except NotEnoughTrust:
                if block.height - trusted.height < 2:
                    raise
                pending.append(self._fetch((trusted.height + block.height) // 2))
                continue
            pending.pop()
            self._remember(block)
            trusted = block
        return trusted

    def _verify_step(self, trusted: LightBlock, block: LightBlock, now: float) -> None:
        if block.height <= trusted.height:
            raise HeaderRefused(f"header {block.height} is not after the trusted header {trusted.height}")
        if block.time_ns <= trusted.time_ns:
            raise HeaderRefused(f"header {block.height}'s time is not after trusted header {trusted.height}'s")
        if block.time > now + MAX_CLOCK_DRIFT:
            raise HeaderRefused(f"header {block.height}'s time is in the future")
        check_light_block(block, self.chain_id)
        if block.height == trusted.height + 1:
            if block.header["validators_hash"].lower() != trusted.header["next_validators_hash"].lower():
                raise HeaderRefused(f"header {block.height}'s validators are not the next of trusted {trusted.height}")
            if block.header["last_block_id"]["hash"].lower() != trusted.hash.hex():
                raise HeaderRefused(f"header {block.height} does not follow trusted header {trusted.height}")
            return  # more than 2/3 of the set the trusted header named signed it (check_light_block)
        if block.header["validators_hash"].lower() == trusted.header["next_validators_hash"].lower():
            return  # the trusted next set itself, more than 2/3 of it: more than the trust level
        signed, total = signed_power(block, trusted.next_validators, self.chain_id)
        numerator, denominator = TRUST_LEVEL
        if signed * denominator <= total * numerator:
            raise NotEnoughTrust(
                f"header {block.height}: validators trusted at {trusted.height} signed {signed} of {total} power,"
                f" not more than {numerator}/{denominator}"
            )

    # --- backwards --------------------------------------------------------------------------------

    def _backward(self, trusted: LightBlock, height: int) -> LightBlock:
        """Walk down the hash chain from `trusted` to `height`: each header must hash to the one
        its successor names as `last_block_id`."""
        if trusted.height - height > MAX_BACKWARD:
            raise HeaderRefused(
                f"header {height} is {trusted.height - height} blocks below the nearest trusted one"
                f" (at most {MAX_BACKWARD})"
            )
        block = trusted
        while block.height > height:
            below = self._fetch(block.height - 1)
            if below.height != block.height - 1 or below.hash.hex() != block.header["last_block_id"]["hash"].lower():
                raise HeaderRefused(f"header {block.height - 1} is not the one header {block.height} follows")
            if below.header["next_validators_hash"].lower() != block.header["validators_hash"].lower():
                raise HeaderRefused(f"header {block.height - 1}'s next validators are not header {block.height}'s")
            check_sets(below, self.chain_id)  # linked by hash: no signature of an old set is needed
            block = below
        self._remember(block)
        return block

    def _remember(self, block: LightBlock) -> None:
        with self._lock:
            if block.height in self._trusted:
                return
            self._trusted[block.height] = block
            bisect.insort(self._heights, block.height)
            while len(self._heights) > MAX_TRUSTED:  # drop the oldest but the anchor and the latest
                drop = self._heights[1] if self._heights[0] == self._anchor else self._heights[0]
                self._heights.remove(drop)
                del self._trusted[drop]
