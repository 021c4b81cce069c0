"""The chain and its model for the state-machine tests (test_state_machines.py).

- `template()`: one set-up chain per process (a tee+vanilla node with an attested DEV enclave, a
  vanilla-only node, a validator, funded and escrowed clients), copied for every example so each
  starts from the same committed state in milliseconds.
- `SmNode`: the in-process app over such a copy, with its own block clock.
- `Ledger`: a plain-Python model of the money rules (fees, transfers, escrow lanes and delayed
  withdrawals, bonds and delayed unbonding, settlement of single receipts and batches, claims and
  their deadlines (slash, refund, or void for an outside cause), equivocation and duplicate-vote
  slashing, governance of params and of the enclave's measurement) that predicts every tx's
  result code and every balance, escrow, stake, nonce, allowance spend and pending claim. `Refused(code)` is a predicted
  refusal; the ledger is restored to before the tx's messages (the fee and nonce stand), as the
  chain does in FinalizeBlock.
"""

from __future__ import annotations

import atexit
import base64
import copy
import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tendermint.abci import types_pb2 as abci

from haca.chain.genesis import AppGenesis, GenesisAccount, TeeGenesis
from haca.chain.modules.inference.keeper import ESCROW_ACCOUNT, InferenceParams
from haca.chain.modules.staking.keeper import STAKING_ACCOUNT, StakingParams
from haca.crypto.hashing import sha256
from haca.crypto.keys import PrivateKey
from haca.enclave.measure import enclave_measurement
from haca.proofs.tee.binding import key_binding, measurement_id
from haca.proofs.tee.claims import Claims
from haca.proofs.tee.dev import (
    PLATFORM_CERT_FILE,
    PLATFORM_KEY_FILE,
    issue_dev_platform,
    make_dev_evidence,
    make_dev_root,
)
from haca.proofs.tee.policy import TeePolicy
from haca.types import codes
from haca.types.inference import MsgDeposit
from haca.types.payment import PaymentAuthorization, SignedPayment, SpendingAllowance
from haca.types.receipt import Receipt, SignedReceipt
from haca.types.registry import MsgRegisterModel, MsgRegisterNode
from haca.types.tee import MsgAttestEnclave
from tests.unit.chain.apphelpers import CHAIN_ID, FEES, Node, block_hash_of

# --- the accounts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key(PrivateKey):
    """A private key that derives its address once (the machines ask for it at every step)."""

    @functools.cached_property
    def address(self) -> str:
        return PrivateKey(self.secret).address


RICH, MID, POOR, NODE, NODE_B, OPERATOR, MALLORY, OWNER, AUTHORITY = (
    Key.from_seed(f"sm-{name}")
    for name in ("rich", "mid", "poor", "node", "node-b", "operator", "mallory", "owner", "authority")
)
ENCLAVE = Key.from_seed("sm-enclave")
STRANGER = "0x" + "5a" * 20  # an address nobody holds the key of (transfers to it only)
CLIENTS = (RICH, MID, POOR)
BY_NAME = {
    "RICH": RICH,
    "MID": MID,
    "POOR": POOR,
    "NODE": NODE,
    "NODE_B": NODE_B,
    "OPERATOR": OPERATOR,
    "MALLORY": MALLORY,
    "OWNER": OWNER,
    "AUTHORITY": AUTHORITY,
}
NODES = (NODE, NODE_B)
KEYS = {k.address: k for k in (RICH, MID, POOR, NODE, NODE_B, OPERATOR, MALLORY, OWNER, AUTHORITY)}
SIGNERS = (RICH, MID, POOR, NODE, NODE_B, OPERATOR, MALLORY, AUTHORITY)  # those the machines sign txs with
ADDRESSES = (*KEYS, STRANGER, ESCROW_ACCOUNT, STAKING_ACCOUNT)
FUNDS = {
    RICH.address: 10**9,
    MID.address: 150_000,
    POOR.address: 8_000,  # one small tx, then the fee itself is out of reach
    NODE.address: 10**9,
    NODE_B.address: 10**8,
    OPERATOR.address: 10**7,
    MALLORY.address: 10**8,
    OWNER.address: 10**8,
    AUTHORITY.address: 10**8,
}
VALIDATOR_KEY = bytes(range(1, 33))  # an ed25519 public key (any 32 bytes do for the app)
VALIDATOR_ADDRESS = hashlib.sha256(VALIDATOR_KEY).digest()[:20]
BONDS = {NODE.address: 5 * 10**6, NODE_B.address: 2 * 10**6, OPERATOR.address: 10**7}
GENESIS_SUPPLY = sum(FUNDS.values()) + sum(BONDS.values())
# what the template deposits: (client, node) -> amount
DEPOSITS = {
    (RICH.address, NODE.address): 10**6,
    (RICH.address, NODE_B.address): 10**6,
    (MID.address, NODE.address): 40_000,
}

# --- the params ----------------------------------------------------------------------------------

PARAMS = InferenceParams(
    withdraw_delay=3,
    revoke_delay=2,
    settlement_fee=100,
    settlement_fee_bps=500,
    claim_deadline=4,
    claim_window=12,
    claim_slash_bps=1_000,
    claim_compensation_bps=5_000,
    equivocation_slash_bps=2_000,
    equivocation_reward_bps=1_000,
)
MIN_STAKE = 10**6  # of both modes at genesis (governance may change them)
STAKING = StakingParams(
    unbonding_period=PARAMS.claim_window + PARAMS.claim_deadline,  # the shortest the chain accepts
    min_stake_vanilla=MIN_STAKE,
    min_stake_tee=MIN_STAKE,
    double_sign_slash_bps=500,
)
BPS = 10_000
PRICE = 1_000
SCHEMA = {"x": {"dtype": "float32", "shape": [1, 4]}}
MODEL = MsgRegisterModel("sm-model", "sha256:" + sha256(b"sm-model").hex(), SCHEMA, SCHEMA, ("tee", "vanilla"), PRICE)
NODE_MODES = {NODE.address: ("tee", "vanilla"), NODE_B.address: ("vanilla",)}
DEV_MID = measurement_id(Claims("dev", {"measurement": enclave_measurement()}, b"", False, "UpToDate"))
FAR = 10**9  # an expiry no run reaches

# --- the chain -----------------------------------------------------------------------------------

T0 = int(time.time())  # the DEV certificates are made now: block times must fall in their validity


def block_time(height: int) -> int:
    return T0 + 2 * height


class SmNode(Node):
    """The shared harness with this module's block clock."""

    def time_of(self, height: int) -> int:
        return block_time(height)

    def replay(self, txs: list[bytes], misbehavior: Sequence[abci.Misbehavior]) -> abci.ResponseFinalizeBlock:
        """The same block through ProcessProposal first (a validator that is not the proposer),
        whose execution FinalizeBlock then reuses; a proposal with an unchargeable tx is rejected,
        as CometBFT would, and then finalized directly (what a node catching up does)."""
        height = self.height + 1
        proposal = abci.RequestProcessProposal(height=height, txs=txs, hash=block_hash_of(height))
        proposal.time.seconds = self.time_of(height)
        proposal.misbehavior.extend(misbehavior)
        self.app.process_proposal(proposal)
        resp = self.finalize(txs, misbehavior)
        self.app.commit(abci.RequestCommit())
        return resp


def duplicate_vote(height: int) -> abci.Misbehavior:
    evidence = abci.Misbehavior(type=abci.MisbehaviorType.DUPLICATE_VOTE, height=height, total_voting_power=40)
    evidence.validator.address = VALIDATOR_ADDRESS
    evidence.validator.power = 10
    return evidence


@dataclass(frozen=True)
class Template:
    db: Path  # the committed state every example starts from
    height: int


_TEMPLATE: Template | None = None
# SQLite commits with fsync: in memory-backed /dev/shm, where there is one, they cost nothing
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def template() -> Template:
    """The set-up chain, built once per process (DEV root and platform, genesis, model, nodes,
    deposits, the enclave's attestation)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = _build_template()
    return _TEMPLATE


def _build_template() -> Template:
    base = Path(tempfile.mkdtemp(prefix="haca-sm-template-", dir=SCRATCH))
    atexit.register(shutil.rmtree, base, True)
    root_dir, platform_dir = base / "root", base / "platform"
    root_dir.mkdir()
    platform_dir.mkdir()
    root = make_dev_root(root_dir)
    issue_dev_platform(root_dir, platform_dir)
    policy = TeePolicy(formats=("dev",), roots={"dev": root.decode()}, heartbeat_interval=10**6, nonce_window=50)
    genesis = AppGenesis(
        fees=FEES,
        inference=PARAMS,
        staking=STAKING,
        accounts=tuple(GenesisAccount(address, amount) for address, amount in FUNDS.items()),
        tee=TeeGenesis(policy, (("*", DEV_MID),)),
        authorities=(AUTHORITY.address,),
        bonds=tuple(BONDS.items()),
        validators=((base64.b64encode(VALIDATOR_KEY).decode(), OPERATOR.address),),
    )
    assert genesis.total_supply == GENESIS_SUPPLY
    chain = SmNode(base / "template.db")
    chain.init(genesis)
    chain.block()
    results = list(chain.block([chain.tx(OWNER, MODEL)]).tx_results)
    setup = [
        chain.tx(NODE, MsgRegisterNode("http://sm-node:8000", NODE_MODES[NODE.address], (MODEL.name,), 0)),
        chain.tx(NODE_B, MsgRegisterNode("http://sm-node-b:8000", NODE_MODES[NODE_B.address], (MODEL.name,), 0)),
    ]
    offsets: dict[str, int] = {}
    for (client, node), amount in DEPOSITS.items():
        setup.append(chain.tx(KEYS[client], MsgDeposit(node, amount), offset=offsets.get(client, 0)))
        offsets[client] = offsets.get(client, 0) + 1
    results += chain.block(setup).tx_results
    report = key_binding(CHAIN_ID, NODE.address, ENCLAVE.address, block_hash_of(chain.height))
    evidence = make_dev_evidence(
        (platform_dir / PLATFORM_KEY_FILE).read_bytes(),
        (platform_dir / PLATFORM_CERT_FILE).read_bytes(),
        enclave_measurement(),
        report,
        block_time(chain.height + 1),
        False,
    )
    results += chain.block(
        [chain.tx(NODE, MsgAttestEnclave(ENCLAVE.address, "dev", evidence, b"", chain.height))]
    ).tx_results
    assert [r.code for r in results] == [0] * len(results), [r.log for r in results]
    height = chain.height
    chain.close()
    return Template(base / "template.db", height)


def open_copy(directory: Path) -> SmNode:
    """A fresh app over a copy of the template's committed state."""
    db = directory / "state.db"
    shutil.copyfile(template().db, db)
    return SmNode(db)


# --- receipts and payments -----------------------------------------------------------------------


@functools.cache
def allowance(client: str, node: str, nonce: int) -> SpendingAllowance:
    """The allowances the machines pay with: nonce 1 a large cap, nonce 2 a small one, nonce 3 one
    that expires a few blocks into the run, nonce 4 one with a maximum per request."""
    cap = {1: 10**7, 2: 5_000, 3: 10**7, 4: 10**7}[nonce]
    expiry = template().height + 12 if nonce == 3 else FAR
    return SpendingAllowance(CHAIN_ID, client, node, cap, expiry, nonce, max_per_request=2_000 if nonce == 4 else 0)


ALLOWANCE_NONCES = (1, 2, 3, 4)


@dataclass(frozen=True)
class Served:
    """A receipt a node signed (by `signer`'s key), with the payment its client gave for it."""

    signed: SignedReceipt
    signer: str  # who signed the receipt
    payment: SignedPayment
    payer: str  # who signed the payment

    @property
    def receipt(self) -> Receipt:
        return self.signed.receipt

    @property
    def id(self) -> str:
        return self.signed.id

    def __repr__(self) -> str:  # what a failing example prints
        r = self.receipt
        value = self.payment.value
        pay = (
            f"allowance#{value.nonce}"
            if isinstance(value, SpendingAllowance)
            else f"request(max={value.max_fee},exp={value.expiry})"
        )
        return (
            f"Served({NAMES.get(r.client)}@{NAMES.get(r.node)} {r.mode} req={r.request_id[:10]} fee={r.fee}"
            f" hint={r.height_hint} out={r.output_hash[:8]} signer={NAMES.get(self.signer)} {pay}"
            f" payer={NAMES.get(self.payer)})"
        )


NAMES = {
    RICH.address: "RICH",
    MID.address: "MID",
    POOR.address: "POOR",
    NODE.address: "NODE",
    NODE_B.address: "NODE_B",
    OPERATOR.address: "OPERATOR",
    MALLORY.address: "MALLORY",
    OWNER.address: "OWNER",
    AUTHORITY.address: "AUTHORITY",
    ENCLAVE.address: "ENCLAVE",
    STRANGER: "STRANGER",
    ESCROW_ACCOUNT: "ESCROW",
    STAKING_ACCOUNT: "STAKING",
}


def make_receipt(client: str, node: str, mode: str, fee: int, hint: int, tag: str, output: str = "out") -> Receipt:
    return Receipt(
        chain_id=CHAIN_ID,
        node=node,
        client=client,
        request_id="0x" + sha256(f"sm-request-{tag}".encode()).hex(),
        model_id=MODEL.model_id,
        mode=mode,
        input_hash="0x" + sha256(b"input-" + tag.encode()).hex(),
        output_hash="0x" + sha256(output.encode()).hex(),
        fee=fee,
        height_hint=hint,
        timestamp=T0,
    )


def request_payment(receipt: Receipt, max_fee: int, expiry: int, payer: PrivateKey) -> SignedPayment:
    auth = PaymentAuthorization(
        CHAIN_ID, receipt.client, receipt.node, receipt.request_id, receipt.model_id, receipt.mode, max_fee, expiry
    )
    return SignedPayment("request", auth, auth.sign(payer))


def allowance_payment(value: SpendingAllowance, payer: PrivateKey) -> SignedPayment:
    return SignedPayment("allowance", value, value.sign(payer))


# --- the model -----------------------------------------------------------------------------------


class Refused(Exception):
    """The model's prediction that the chain refuses a message with `code`."""

    def __init__(self, code: int, why: str = "") -> None:
        super().__init__(f"{code}: {why}")
        self.code = code


@dataclass
class ModelClaim:
    client: str
    node: str
    request: str
    fee: int
    held: int
    deadline: int
    allowance_id: str  # "" when paid per request
    signer: str  # who signed the receipt
    mode: str
    hint: int  # the receipt's height hint
    height: int  # when the claim was made
    min_stake: int  # the mode's minimum stake then
    bonded: int  # the node's bond then


@dataclass
class Ledger:
    """Everything the money rules decide, kept as plain dicts (zero entries are dropped)."""

    bal: dict[str, int]
    nonce: dict[str, int]
    supply: int
    burned: int
    lanes: dict[tuple[str, str], int] = field(default_factory=dict)  # (client, node)
    withdrawals: dict[tuple[int, str, str], int] = field(default_factory=dict)  # (release, client, node)
    bonded: dict[str, int] = field(default_factory=dict)
    unbonding: dict[tuple[int, str], int] = field(default_factory=dict)  # (release, address)
    claims: dict[str, ModelClaim] = field(default_factory=dict)  # receipt id
    settled: dict[tuple[str, str], str] = field(default_factory=dict)  # (client, request id) -> receipt id
    failed: set[str] = field(default_factory=set)  # receipt ids whose claim expired (slashed)
    spent: dict[str, int] = field(default_factory=dict)  # allowance id
    revoked: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (client, node, nonce) -> from
    batches: set[str] = field(default_factory=set)
    equivocations: set[tuple[str, str, str]] = field(default_factory=set)
    jailed: bool = False
    params: InferenceParams = PARAMS
    staking: StakingParams = STAKING
    approved: set[str] = field(default_factory=lambda: {"*"})  # scopes DEV_MID is approved under
    revoked_at: dict[str, int] = field(default_factory=dict)  # scope -> height of its latest revocation

    # --- building blocks (each mirrors a keeper method) ------------------------------------------

    def _add(self, table: dict[Any, int], key: Any, amount: int) -> None:
        value = table.get(key, 0) + amount
        assert value >= 0, f"model: {key} would go negative"
        if value:
            table[key] = value
        else:
            table.pop(key, None)

    def send(self, sender: str, recipient: str, amount: int) -> None:
        if self.bal.get(sender, 0) < amount:
            raise Refused(codes.INSUFFICIENT_FUNDS, f"{NAMES.get(sender, sender)} cannot pay {amount}")
        self._add(self.bal, sender, -amount)
        self._add(self.bal, recipient, amount)

    def burn(self, holder: str, amount: int) -> None:
        if self.bal.get(holder, 0) < amount:
            raise Refused(codes.INSUFFICIENT_FUNDS, f"{NAMES.get(holder, holder)} cannot burn {amount}")
        self._add(self.bal, holder, -amount)
        self.supply -= amount
        self.burned += amount

    def stake(self, address: str) -> int:
        return self.bonded.get(address, 0) + sum(a for (_, who), a in self.unbonding.items() if who == address)

    def slash(self, address: str, bps: int) -> int:
        """Take from the bond first, then the unbonding amounts, latest release first."""
        amount = self.stake(address) * bps // BPS
        left = amount
        take = min(self.bonded.get(address, 0), left)
        self._add(self.bonded, address, -take)
        left -= take
        for release in sorted((r for r, who in self.unbonding if who == address), reverse=True):
            if not left:
                break
            take = min(self.unbonding[(release, address)], left)
            self._add(self.unbonding, (release, address), -take)
            left -= take
        return amount - left

    def pay_out_slash(self, slashed: int, recipient: str, share_bps: int) -> None:
        """`share_bps` of a slash to `recipient`, the rest burned (from STAKING_ACCOUNT)."""
        share = slashed * share_bps // BPS
        if share:
            self.send(STAKING_ACCOUNT, recipient, share)
        if slashed - share:
            self.burn(STAKING_ACCOUNT, slashed - share)

    def settlement_fee(self, fee: int) -> int:
        return self.params.settlement_fee_for(fee)

    def pay_from_lane(self, client: str, node: str, recipient: str | None, amount: int) -> None:
        """To `recipient`, or burned when None."""
        if self.lanes.get((client, node), 0) < amount:
            raise Refused(codes.INSUFFICIENT_ESCROW, "lane")
        self._add(self.lanes, (client, node), -amount)
        if recipient is None:
            self.burn(ESCROW_ACCOUNT, amount)
        else:
            self.send(ESCROW_ACCOUNT, recipient, amount)

    def is_revoked(self, client: str, node: str, nonce: int, height: int) -> bool:
        start = self.revoked.get((client, node, nonce), 0)
        return start != 0 and height >= start

    def approved_now(self) -> bool:
        return bool(self.approved & {"*", MODEL.name})

    def outside_cause(self, claim: ModelClaim) -> bool:
        """Governance, not the node, kept the claimed receipt from settling: the claim is voided."""
        if claim.signer == ENCLAVE.address and claim.mode == "tee":
            revoked = max(self.revoked_at.get("*", 0), self.revoked_at.get(MODEL.name, 0))
            if revoked and revoked >= claim.hint and (not self.approved_now() or revoked >= claim.height):
                return True
        return False

    def last_deadline(self, node: str) -> int:
        return max((c.deadline for c in self.claims.values() if c.node == node), default=0)

    # --- txs ---------------------------------------------------------------------------------

    def run_tx(self, signer: str, fee: int, apply: Any) -> int:
        """The ante step (fee burned, nonce bumped; nothing at all when the fee is out of reach),
        then `apply(self)`, undone if it raises Refused. The code the chain must answer."""
        if self.bal.get(signer, 0) < fee:
            return codes.INSUFFICIENT_FUNDS
        self.burn(signer, fee)
        self.nonce[signer] = self.nonce.get(signer, 0) + 1
        saved = copy.deepcopy(self.__dict__)
        try:
            apply(self)
        except Refused as refused:
            self.__dict__.update(saved)
            return refused.code
        return 0

    # --- blocks ------------------------------------------------------------------------------

    def begin_block(self, height: int, double_sign: bool) -> None:
        # staking: the unbonding due now (postponed past a pending claim's deadline), then evidence
        for release, address in sorted(k for k in self.unbonding if k[0] == height):
            amount = self.unbonding.pop((release, address))
            until = self.last_deadline(address)
            if until >= height:
                self._add(self.unbonding, (until + 1, address), amount)
            else:
                self.send(STAKING_ACCOUNT, address, amount)
        if double_sign and not self.jailed:
            self.burn(STAKING_ACCOUNT, self.slash(OPERATOR.address, self.staking.double_sign_slash_bps))
            self.jailed = True
        # inference: the withdrawals due now (what is left of the lane, if less)
        for key in sorted(k for k in self.withdrawals if k[0] == height):
            _, client, node = key
            amount = min(self.withdrawals.pop(key), self.lanes.get((client, node), 0))
            if amount:
                self.pay_from_lane(client, node, client, amount)

    def end_block(self, height: int) -> None:
        """Claims whose deadline is now: the held fee back, the node slashed, the client compensated."""
        for receipt_id in sorted(r for r, c in self.claims.items() if c.deadline == height):
            claim = self.claims.pop(receipt_id)
            if claim.allowance_id:
                self._add(self.spent, claim.allowance_id, -claim.fee)
            if self.outside_cause(claim):
                self._add(self.lanes, (claim.client, claim.node), claim.held)
                continue
            self.send(ESCROW_ACCOUNT, claim.client, claim.held)
            slashed = self.slash(claim.node, self.params.claim_slash_bps)
            self.pay_out_slash(slashed, claim.client, self.params.claim_compensation_bps)
            self.settled[(claim.client, claim.request)] = receipt_id
            self.failed.add(receipt_id)

    # --- messages ----------------------------------------------------------------------------

    def transfer(self, signer: str, to: str, amount: int) -> None:
        if to in (ESCROW_ACCOUNT, STAKING_ACCOUNT):
            raise Refused(codes.UNAUTHORIZED, "module account")
        self.send(signer, to, amount)

    def deposit(self, signer: str, node: str, amount: int) -> None:
        self.send(signer, ESCROW_ACCOUNT, amount)
        self._add(self.lanes, (signer, node), amount)

    def withdraw(self, signer: str, node: str, amount: int, height: int) -> None:
        pending = sum(a for (_, c, n), a in self.withdrawals.items() if (c, n) == (signer, node))
        if amount + pending > self.lanes.get((signer, node), 0):
            raise Refused(codes.INSUFFICIENT_ESCROW, "withdrawal")
        self._add(self.withdrawals, (height + self.params.withdraw_delay, signer, node), amount)

    def bond(self, signer: str, amount: int) -> None:
        self.send(signer, STAKING_ACCOUNT, amount)
        self._add(self.bonded, signer, amount)

    def unbond(self, signer: str, amount: int, height: int) -> None:
        if amount > self.bonded.get(signer, 0):
            raise Refused(codes.INSUFFICIENT_STAKE, "unbond")
        self._add(self.bonded, signer, -amount)
        self._add(self.unbonding, (height + self.staking.unbonding_period, signer), amount)

    def revoke(self, signer: str, node: str, nonce: int, height: int) -> None:
        self.revoked.setdefault((signer, node, nonce), height + max(1, self.params.revoke_delay))

    def _receipt_signed_by_node(self, served: Served) -> None:
        """Claims and equivocation reports: the node's own key or its attested enclave."""
        node = served.receipt.node
        if not (served.signer == node or (served.signer == ENCLAVE.address and node == NODE.address)):
            raise Refused(codes.INVALID_EVIDENCE, "receipt signer")

    def _verify(self, served: Served) -> None:
        r = served.receipt
        if r.mode == "vanilla" and served.signer != r.node:
            raise Refused(codes.INVALID_EVIDENCE, "vanilla signer")
        if r.mode == "tee" and not (served.signer == ENCLAVE.address and r.node == NODE.address):
            raise Refused(codes.INVALID_EVIDENCE, "tee signer")
        if r.mode == "tee" and not self.approved_now():
            raise Refused(codes.MEASUREMENT_NOT_APPROVED, "measurement revoked")

    def _check_authorisation(self, payment: SignedPayment, payer: str, node: str, height: int) -> None:
        auth = payment.value
        if payer != auth.client:
            raise Refused(codes.INVALID_PAYMENT, "payment signer")
        if auth.node != node:
            raise Refused(codes.INVALID_PAYMENT, "payment node")
        if height > auth.expiry:
            raise Refused(codes.AUTHORIZATION_EXPIRED, "payment expired")

    def _check_payment_for(self, r: Receipt, payment: SignedPayment, payer: str, height: int) -> None:
        auth = payment.value
        if auth.client != r.client:
            raise Refused(codes.INVALID_PAYMENT, "payment client")
        self._check_authorisation(payment, payer, r.node, height)
        if isinstance(auth, PaymentAuthorization):
            if (auth.request_id, auth.model_id, auth.mode) != (r.request_id, r.model_id, r.mode):
                raise Refused(codes.INVALID_PAYMENT, "another request")
            if r.fee > auth.max_fee:
                raise Refused(codes.FEE_ABOVE_LIMIT, "max fee")
        else:
            if self.is_revoked(auth.client, auth.node, auth.nonce, height):
                raise Refused(codes.INVALID_PAYMENT, "revoked")
            if auth.max_per_request and r.fee > auth.max_per_request:
                raise Refused(codes.FEE_ABOVE_LIMIT, "max per request")
            if self.spent.get(auth.id, 0) + r.fee > auth.cap:
                raise Refused(codes.FEE_ABOVE_LIMIT, "cap")

    def settle_item(self, signer: str, served: Served, height: int) -> None:
        r = served.receipt
        if r.node != signer:
            raise Refused(codes.UNAUTHORIZED, "not the receipt's node")
        if r.height_hint > height:
            raise Refused(codes.INVALID_PAYMENT, "future height hint")
        claimed = served.id in self.claims
        if not claimed and height > r.height_hint + self.params.claim_window:
            raise Refused(codes.AUTHORIZATION_EXPIRED, "settlement window")
        if r.mode not in NODE_MODES[signer]:
            raise Refused(codes.UNAUTHORIZED, "mode not served")
        met = claimed and self.claims[served.id].bonded >= self.claims[served.id].min_stake
        if not met and self.bonded.get(signer, 0) < self.staking.min_stake((r.mode,)):
            raise Refused(codes.INSUFFICIENT_STAKE, "stake")  # a claim made while it was met pays
        self._verify(served)
        if r.fee < PRICE:
            raise Refused(codes.INVALID_PAYMENT, "below price")
        if not claimed:
            self._check_payment_for(r, served.payment, served.payer, height)
            if isinstance(served.payment.value, SpendingAllowance):
                self._add(self.spent, served.payment.value.id, r.fee)
        if (r.client, r.request_id) in self.settled:
            raise Refused(codes.ALREADY_SETTLED, "settled")
        sf = self.settlement_fee(r.fee)
        if claimed:
            claim = self.claims.pop(served.id)
            self._add(self.lanes, (claim.client, claim.node), claim.held)
            sf = claim.held - r.fee
        if self.lanes.get((r.client, r.node), 0) < r.fee + sf:
            raise Refused(codes.INSUFFICIENT_ESCROW, "lane")
        self.pay_from_lane(r.client, r.node, r.node, r.fee)
        self.pay_from_lane(r.client, r.node, None, sf)
        self.settled[(r.client, r.request_id)] = served.id

    def settle(self, signer: str, items: Sequence[Served], height: int) -> None:
        for served in items:
            self.settle_item(signer, served, height)

    def settle_batch(
        self, signer: str, mode: str, batch_id: str, root_signer: str, items: Sequence[Served], height: int
    ) -> list[tuple[int, int]]:
        """The batch's (index, code) of its rejected items; Refused when it is refused whole."""
        if signer not in NODE_MODES:
            raise Refused(codes.NOT_FOUND, "not a node")
        if mode not in NODE_MODES[signer]:
            raise Refused(codes.UNAUTHORIZED, "mode")
        if self.bonded.get(signer, 0) < self.staking.min_stake((mode,)):
            raise Refused(codes.INSUFFICIENT_STAKE, "stake")
        if batch_id in self.batches:
            raise Refused(codes.ALREADY_SETTLED, "batch seen")
        if mode == "vanilla" and root_signer != signer:
            raise Refused(codes.INVALID_EVIDENCE, "root signer")
        if mode == "tee" and not (root_signer == ENCLAVE.address and signer == NODE.address):
            raise Refused(codes.INVALID_EVIDENCE, "root signer")
        self.batches.add(batch_id)
        rejected: list[tuple[int, int]] = []
        seen: set[tuple[str, str]] = set()
        charged: dict[str, int] = {}  # allowance id -> fees in this batch
        owed: dict[str, int] = {}  # client -> fee + settlement fee charged to its lane in this batch
        lane_at_start = {s.receipt.client: self.lanes.get((s.receipt.client, signer), 0) for s in items}
        pay: list[tuple[str, int, int]] = []
        for index, served in enumerate(items):
            r, value = served.receipt, served.payment.value
            assert isinstance(value, SpendingAllowance)
            try:
                if served.id in {rid for rid, c in self.claims.items() if c.node == signer}:
                    raise Refused(codes.CLAIM_CONFLICT, "claimed")
                if r.height_hint > height:
                    raise Refused(codes.INVALID_PAYMENT, "future")
                if height > r.height_hint + self.params.claim_window:
                    raise Refused(codes.AUTHORIZATION_EXPIRED, "window")
                if mode == "tee" and not self.approved_now():
                    raise Refused(codes.MEASUREMENT_NOT_APPROVED, "measurement revoked")
                if r.fee < PRICE:
                    raise Refused(codes.INVALID_PAYMENT, "below price")
                self._check_authorisation(served.payment, served.payer, signer, height)
                if self.is_revoked(value.client, value.node, value.nonce, height):
                    raise Refused(codes.INVALID_PAYMENT, "revoked")
                if value.max_per_request and r.fee > value.max_per_request:
                    raise Refused(codes.FEE_ABOVE_LIMIT, "max per request")
                if self.spent.get(value.id, 0) + charged.get(value.id, 0) + r.fee > value.cap:
                    raise Refused(codes.FEE_ABOVE_LIMIT, "cap")
                if (r.client, r.request_id) in seen:
                    raise Refused(codes.ALREADY_SETTLED, "twice in the batch")
                if (r.client, r.request_id) in self.settled:
                    raise Refused(codes.ALREADY_SETTLED, "settled")
                sf = self.settlement_fee(r.fee)
                if lane_at_start[r.client] < owed.get(r.client, 0) + r.fee + sf:
                    raise Refused(codes.INSUFFICIENT_ESCROW, "lane")
            except Refused as refused:
                rejected.append((index, refused.code))
                continue
            seen.add((r.client, r.request_id))
            charged[value.id] = charged.get(value.id, 0) + r.fee
            owed[r.client] = owed.get(r.client, 0) + r.fee + sf
            pay.append((r.client, r.fee, sf))
            self.settled[(r.client, r.request_id)] = served.id
        for allowance_id, amount in charged.items():
            self._add(self.spent, allowance_id, amount)
        for client, fee, sf in pay:
            self.pay_from_lane(client, signer, signer, fee)
            self.pay_from_lane(client, signer, None, sf)
        return rejected

    def claim(self, signer: str, served: Served, payment: SignedPayment, payer: str, height: int) -> None:
        r = served.receipt
        if signer != r.client:
            raise Refused(codes.UNAUTHORIZED, "not the client")
        if r.mode not in ("tee", "zkml"):
            raise Refused(codes.CLAIM_CONFLICT, "not claimable")
        self._receipt_signed_by_node(served)
        if served.id in self.claims:
            raise Refused(codes.CLAIM_CONFLICT, "claimed")
        if (r.client, r.request_id) in self.settled:
            raise Refused(codes.CLAIM_CONFLICT, "settled")
        deadline = height + self.params.claim_deadline
        if r.height_hint > height:
            raise Refused(codes.CLAIM_CONFLICT, "future")
        if height > r.height_hint + self.params.claim_window:
            raise Refused(codes.CLAIM_WINDOW_NOT_COVERED, "window")
        self._check_payment_for(r, payment, payer, height)
        auth = payment.value
        if auth.expiry < deadline:
            raise Refused(codes.CLAIM_WINDOW_NOT_COVERED, "expires before the deadline")
        allowance_id = ""
        if isinstance(auth, SpendingAllowance):
            revoked = self.revoked.get((auth.client, auth.node, auth.nonce), 0)
            if revoked and revoked <= deadline:
                raise Refused(codes.CLAIM_WINDOW_NOT_COVERED, "revoked before the deadline")
            self._add(self.spent, auth.id, r.fee)
            allowance_id = auth.id
        held = r.fee + self.settlement_fee(r.fee)
        if self.lanes.get((r.client, r.node), 0) < held:
            raise Refused(codes.INSUFFICIENT_ESCROW, "hold")
        self._add(self.lanes, (r.client, r.node), -held)
        self.claims[served.id] = ModelClaim(
            r.client,
            r.node,
            r.request_id,
            r.fee,
            held,
            deadline,
            allowance_id,
            served.signer,
            r.mode,
            r.height_hint,
            height,
            self.staking.min_stake((r.mode,)),
            self.bonded.get(r.node, 0),
        )

    def update_params(self, signer: str, module: str, changes: dict[str, str]) -> None:
        if signer != AUTHORITY.address:
            raise Refused(codes.UNAUTHORIZED, "not an authority")
        values = {k: int(v) for k, v in changes.items()}
        params = dataclasses.replace(self.params, **values) if module == "inference" else self.params
        staking = dataclasses.replace(self.staking, **values) if module == "staking" else self.staking
        if staking.unbonding_period < params.claim_window + params.claim_deadline:
            raise Refused(codes.INVALID_MESSAGE, "evidence windows")
        self.params, self.staking = params, staking

    def measurement(self, signer: str, scope: str, approve: bool, height: int) -> None:
        if signer != AUTHORITY.address:
            raise Refused(codes.UNAUTHORIZED, "not an authority")
        if approve:
            self.approved.add(scope)
            return
        if scope not in self.approved:
            raise Refused(codes.NOT_FOUND, "not approved")
        self.approved.discard(scope)
        self.revoked_at[scope] = height

    def report_equivocation(self, signer: str, first: Served, second: Served) -> None:
        a, b = first.receipt, second.receipt
        if (a.node, a.client, a.request_id) != (b.node, b.client, b.request_id):
            raise Refused(codes.INVALID_EVIDENCE, "not one request")
        if a.output_hash == b.output_hash:
            raise Refused(codes.INVALID_EVIDENCE, "same output")
        self._receipt_signed_by_node(first)
        self._receipt_signed_by_node(second)
        if (a.node, a.client, a.request_id) in self.equivocations:
            raise Refused(codes.CLAIM_CONFLICT, "reported")
        self.equivocations.add((a.node, a.client, a.request_id))
        slashed = self.slash(a.node, self.params.equivocation_slash_bps)
        self.pay_out_slash(slashed, signer, self.params.equivocation_reward_bps)


def ledger_of(chain: SmNode) -> Ledger:
    """The model of the template's state, read once from the chain at the start of an example."""
    app, store = chain.app, chain.app.store
    bal = {a: chain.balance(a) for a in ADDRESSES}
    ledger = Ledger(
        bal={a: b for a, b in bal.items() if b},
        nonce={a: chain.nonce(a) for a in KEYS},
        supply=chain.supply()[0],
        burned=chain.supply()[1],
    )
    ledger.lanes = {k: app.inference.escrow(store, *k) for k in DEPOSITS}
    ledger.bonded = {a: app.staking.bonded(store, a) for a in BONDS}
    assert ledger.lanes == DEPOSITS and ledger.bonded == BONDS
    return ledger
