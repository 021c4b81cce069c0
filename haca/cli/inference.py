"""`haca deposit|withdraw|escrow`, `haca infer`, `haca receipt show`, `haca allowance create|revoke`,
`haca node run`: the client side of paid, verifiable inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

import haca.types.messages  # noqa: F401  (registers message types)
from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit
from haca.client.config import ClientConfig
from haca.client.errors import HacaError
from haca.client.records import parse_answer
from haca.client.sdk import Client
from haca.client.tee import ReceiptVerification, describe_gpu
from haca.proofs.tee.dev import DEV_LABEL
from haca.types.inference import EscrowAnswer, MsgClaim, MsgRevokeAllowance
from haca.types.modes import Mode, Status
from haca.types.payment import SignedPayment
from haca.types.receipt import SignedReceipt
from haca.types.settlement import ClaimRecord

receipt_app = typer.Typer(help="Inspect receipts.", no_args_is_help=True)
allowance_app = typer.Typer(help="Spending allowances (bearer API keys) for a node.", no_args_is_help=True)
node_app = typer.Typer(help="Run an inference node.", no_args_is_help=True)
KeyOption = Annotated[str | None, typer.Option("--from", help="key name (default: the home's default key)")]
NodeOption = Annotated[str | None, typer.Option("--node", help="node URL (default: the home's first node)")]


def _client(home: Path | None, key: str | None = None, node: str | None = None) -> Client:
    return Client.from_home(client_home(home), key, node)


def _node_target(node: str | None) -> tuple[str | None, str | None]:
    """--node as (URL, address): it may name the node by URL or by its 0x address."""
    if node and node.startswith("0x"):
        return None, node.lower()
    return node, None


EscrowNodeOption = Annotated[
    str | None, typer.Option("--node", help="the node's URL or 0x address (default: the home's first node)")
]


@cli_command
def deposit(
    amount: Annotated[int, typer.Argument(min=1, help="base units")],
    node: EscrowNodeOption = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Escrow AMOUNT for one node: only that node's receipts are paid from it."""
    url, address = _node_target(node)
    with _client(home, from_, url) as client:
        target = address or client.node_address()
        outcome = client.deposit(amount, target)
        answer = {"hash": outcome.hash, "height": outcome.height, "node": target, "escrow": client.escrow(target)}
    emit(json_out, answer, lambda: console.print(f"deposited {amount} for {target}; escrow now {answer['escrow']}"))


@cli_command
def withdraw(
    amount: Annotated[int, typer.Argument(min=1)],
    node: EscrowNodeOption = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Ask for AMOUNT of your escrow for a node back; it is paid after the chain's withdrawal
    delay, and the node stops serving against it at once."""
    url, address = _node_target(node)
    with _client(home, from_, url) as client:
        outcome = client.withdraw(amount, address or client.node_address())
    release = next(
        (
            a["value"]
            for e in outcome.events
            if e["type"] == "withdraw_requested"
            for a in e["attributes"]
            if a["key"] == "release"
        ),
        "?",
    )
    emit(
        json_out,
        {"hash": outcome.hash, "release_height": int(release)},
        lambda: console.print(f"withdrawal of {amount} is paid at height {release}"),
    )


@cli_command
def escrow(from_: KeyOption = None, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Your escrow per node and pending withdrawals."""
    with _client(home, from_) as client:
        doc = client.chain.query("/inference/escrow", client.key.address.encode())
        answer = parse_answer(EscrowAnswer.from_json, doc, "escrow")
    emit(json_out, answer.to_json(), lambda: _print_lanes(answer))


def _print_lanes(answer: EscrowAnswer) -> None:
    console.print(f"{answer.address}: {answer.escrow} in escrow")
    for lane in answer.lanes:
        pending = ", ".join(f"{w.amount} at height {w.release_height}" for w in lane.withdrawals)
        console.print(
            f"  for node {lane.node}: {lane.escrow} ({lane.available} available"
            + (f"; withdrawing {pending})" if pending else ")")
        )


@cli_command
def infer(
    model: Annotated[str, typer.Option("-m", "--model", help="model name or sha256: id")],
    input_json: Annotated[str, typer.Option("--input", help="input as JSON (nested list or {name: …})")],
    mode: Annotated[str, typer.Option("--mode")] = Mode.VANILLA.value,
    max_fee: Annotated[
        int | None,
        typer.Option("--max-fee", min=0, help="most you will pay (default: the price published on chain)"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until the receipt settles on chain")] = False,
    node: NodeOption = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run an inference: pay the node's quoted fee (when within --max-fee, or by default the
    price on chain), check the receipt locally (it must charge exactly that fee), print it."""
    try:
        value = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise HacaError(f"--input is not JSON: {exc}") from exc
    with _client(home, from_, node) as client:
        result = client.infer(model, value, mode, max_fee)
        status = client.wait_settled(result.receipt_id).status if wait else result.status
    answer: dict[str, Any] = {"output": result.output, "receipt": result.receipt.to_json(), "status": status}

    def human() -> None:
        for name, tensor in result.output.items():
            console.print(f"{name} {tensor['dtype']}{tensor['shape']}: {tensor['data']}")
        r = result.receipt.receipt
        console.print(
            f"receipt {result.receipt_id} (signature verified)\n  node {r.node}  fee {r.fee}  status {status}"
        )

    emit(json_out, answer, human)


class NotVerified(HacaError):
    """The receipt does not verify (or carries no evidence to verify)."""

    code = "not_verified"


@cli_command
def verify(
    receipt_id: Annotated[str, typer.Argument(metavar="RECEIPT_ID")],
    wait: Annotated[bool, typer.Option("--wait", help="wait for the chain to settle it first")] = False,
    node: NodeOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Re-verify a receipt locally: tee — the model ran inside an enclave: the enclave key's registered
    attestation (and its GPU reports) and the TEE policy, the measurement's approval for the
    receipt's model; zkml — the proof, against the circuit and SRS pinned on chain; all read from
    the chain with Merkle proofs, then the receipt's signature. Exit 0 only if it verifies."""
    with _client(home, None, node) as client:
        result = client.wait_verified(receipt_id) if wait else client.verify_receipt(receipt_id)
    doc = result.to_json()
    emit(json_out, doc, lambda: print_verification(result))
    if not result.verified:
        raise NotVerified(result.reason)


def print_verification(result: ReceiptVerification) -> None:
    """`haca verify`'s human output: the verdict, and for tee where the model ran (the platform,
    the GPUs, the DEV label loud) and what the verdict rests on."""
    label = f" [bold red](DEV platform: {DEV_LABEL})[/bold red]" if result.dev else ""
    verdict = "verified" if result.verified else "NOT verified"
    console.print(f"receipt {result.receipt_id}: [bold]{verdict}[/bold]{label}")
    console.print(f"  mode {result.mode}  chain status {result.chain_status}")
    platform = result.platform or result.attestation_format
    if result.enclave_key and platform:  # the key is an attested enclave's: where it ran
        where = "computed and signed inside the enclave" if result.verified else "signed by the enclave key"
        model = f" for model {result.model}" if result.model else ""
        console.print(f"  {where}{model}, platform {platform}", markup=False, highlight=False)
        if platform == "dev":
            console.print(f"    [bold red]!! platform dev: {DEV_LABEL} !![/bold red]")
        for i, gpu in enumerate(result.gpus):
            console.print(f"  GPU {i} ({gpu.get('format', '?')}): {describe_gpu(gpu)}", markup=False, highlight=False)
        if not result.gpus:
            console.print("  GPUs: none attested")
    if result.enclave_key:
        console.print(f"  enclave key {result.enclave_key} ({result.attestation_format})")
        console.print(f"  measurement {result.measurement_id}")
        console.print(f"  proofs checked at height {result.proven_height}")
    if result.mode == Mode.ZKML and result.claims:
        circuit = result.claims
        console.print(f"  proof verified here against vk {circuit['vk_hash']} (logrows {circuit['logrows']})")
        console.print(f"  circuit read from the chain with proofs at height {result.proven_height}")
    if result.reason:
        console.print(f"  reason: {result.reason}", markup=False, highlight=False)


@receipt_app.command("show")
@cli_command
def receipt_show(
    receipt_id: Annotated[str, typer.Argument(metavar="ID")],
    prove: Annotated[
        bool, typer.Option("--prove", help="prove from the chain alone that it settled (batch: its inclusion path)")
    ] = False,
    receipt_file: Annotated[
        Path | None, typer.Option("--receipt", help="the signed receipt (JSON) as the node answered it")
    ] = None,
    node: NodeOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """A receipt's settlement status: the chain's record, else what the node holds. With --prove,
    the chain's record is checked with state proofs against a light-client-verified header, and a
    receipt settled in a batch gets its Merkle inclusion path to the batch root the chain stores."""
    with _client(home, None, node) as client:
        signed = _signed_receipt(receipt_file) if receipt_file is not None else None
        node_view: dict[str, Any] | None = None
        status = client.receipt_status(receipt_id, signed.receipt if signed else None)
        if status.status == Status.PENDING and signed is None:
            node_view = client.node_receipt(receipt_id)
            signed = SignedReceipt.from_json(node_view["receipt"])
            status = client.receipt_status(receipt_id, signed.receipt)
        record = status.to_json()
        if status.status == Status.PENDING and node_view is not None:
            record = {"receipt_id": receipt_id, **node_view}
        if prove:
            record = {**record, "proof": _prove_settled(client, receipt_id, signed)}
    emit(json_out, record, lambda: _print_fields(record))


def _signed_receipt(path: Path) -> SignedReceipt:
    doc = json.loads(path.read_text())
    return SignedReceipt.from_json(doc.get("receipt", doc))


def _prove_settled(client: Client, receipt_id: str, signed: SignedReceipt | None) -> dict[str, Any]:
    """What --prove shows: the batch inclusion (a batched receipt), or the proven record (alone)."""
    if signed is None:
        signed = SignedReceipt.from_json(client.node_receipt(receipt_id)["receipt"])
    if signed.id != receipt_id.lower():
        raise HacaError(f"the receipt given is {signed.id}, not {receipt_id}")
    try:
        inclusion = client.prove_batched(signed)
    except ValueError:  # settled alone: its own record, proven
        proven = client.chain.query_proven("/inference/receipt", signed.id.encode())
        return {"verified": True, "settled": "alone", "height": proven.height, "record": json.loads(proven.raw)}
    proof = inclusion.proof
    return {
        "verified": True,
        "settled": f"item {proof.index} of {proof.count} in batch {proof.batch_id}",
        "height": inclusion.height,
        "root": inclusion.batch.root,
        "path": [("0x" + p.hex()) for p in proof.path],
    }


@receipt_app.command("claim")
@cli_command
def receipt_claim(
    receipt_id: Annotated[str, typer.Argument(metavar="ID")],
    receipt_file: Annotated[
        Path | None, typer.Option("--receipt", help="the signed receipt (JSON) as the node answered it")
    ] = None,
    node: NodeOption = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Claim a tee or zkml receipt whose evidence has not settled: its fee and settlement fee are held
    from your escrow; if no valid evidence settles before the deadline, the node is slashed and you
    get them back plus compensation. The claim shows the payment you signed for the receipt, which
    must last past the deadline. The receipt (and payment) come from --receipt, else from the node."""
    with _client(home, from_, node) as client:
        stored: dict[str, Any] = {}
        if receipt_file is not None:
            doc = json.loads(receipt_file.read_text())
            stored = doc if "receipt" in doc else {"receipt": doc}
        if "payment" not in stored:  # the node keeps the payment with the receipt it answered
            stored = {**client.node_receipt(receipt_id), **stored}
        signed = SignedReceipt.from_json(stored["receipt"])
        if signed.id != receipt_id.lower():
            raise HacaError(f"the receipt given is {signed.id}, not {receipt_id}")
        payment = SignedPayment.from_json(stored["payment"])
        if payment.signer() != client.key.address:
            raise HacaError(f"the payment for {signed.id} is not signed by {client.key.address}")
        outcome = client.chain.send_msgs(client.key, (MsgClaim(signed, payment),))
        doc = client.chain.query("/inference/claim", signed.id.encode())
        claim = parse_answer(
            lambda d: ClaimRecord.from_json({k: v for k, v in d.items() if k != "receipt_id"}), doc, "claim"
        )
    tx = outcome if isinstance(outcome, str) else outcome.hash
    answer = {"receipt_id": signed.id, "hash": tx, "deadline": claim.deadline, "fee_held": str(claim.fee)}
    emit(
        json_out,
        answer,
        lambda: console.print(
            f"claimed {signed.id}: fee {claim.fee} held; the node must settle its evidence by height"
            f" {claim.deadline} or be slashed"
        ),
    )


def _print_fields(record: dict[str, Any]) -> None:
    for key, value in record.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if k not in ("signature",))
        console.print(f"[bold]{key:>15}[/bold]  {value}")


@allowance_app.command("create")
@cli_command
def allowance_create(
    node: Annotated[str, typer.Option("--node", help="the node's address")],
    max_amount: Annotated[int, typer.Option("--max", min=1, help="cap on what the node may charge in total")],
    per_request: Annotated[
        int, typer.Option("--per-request", min=0, help="most the node may charge for one request (0: the cap only)")
    ] = 0,
    expires_in: Annotated[int, typer.Option("--expires-in", min=1, help="blocks from now")] = 100_000,
    nonce: Annotated[int | None, typer.Option("--nonce", help="to revoke it later (default: expiry height)")] = None,
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Sign a spending allowance for a node and print it as a bearer API key (Authorization: Bearer …)."""
    config = ClientConfig.load(client_home(home))
    node_url = next((n["url"] for n in config.extra.get("nodes", []) if n["address"] == node.lower()), None)
    with _client(home, from_, node_url or "http://unused") as client:
        api_key = client.create_api_key(node, max_amount, expires_in, nonce, per_request)
    shown = {"api_key": api_key, "node": node.lower(), "cap": max_amount, "max_per_request": per_request}
    emit(json_out, shown, lambda: console.print(api_key))


@allowance_app.command("revoke")
@cli_command
def allowance_revoke(
    node: Annotated[str, typer.Option("--node", help="the node's address")],
    nonce: Annotated[int, typer.Option("--nonce")],
    from_: KeyOption = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Revoke an allowance on chain: the node stops serving against it at once, and it takes
    effect after the chain's revoke delay (what the node served before then still settles)."""
    with _client(home, from_, "http://unused") as client:
        outcome = client.chain.send_msgs(client.key, (MsgRevokeAllowance(node.lower(), nonce),))
    events = getattr(outcome, "events", [])
    effective = next(
        (
            a["value"]
            for e in events
            if e["type"] == "revoke_allowance"
            for a in e["attributes"]
            if a["key"] == "effective"
        ),
        "?",
    )
    emit(
        json_out,
        {"revoked": True, "height": getattr(outcome, "height", 0), "effective_height": int(effective)},
        lambda: console.print(f"allowance revoked from height {effective}"),
    )


@node_app.command("run")
@cli_command
def node_run(
    key: Annotated[str, typer.Option("--key", help="the node's key in the home")] = "node0",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    endpoint: Annotated[str, typer.Option("--endpoint", help="public URL to register")] = "",
    models: Annotated[str, typer.Option("--models", help="comma-separated names (default: all)")] = "",
    price: Annotated[int, typer.Option("--price", help="per inference; fee = max(this, model price)")] = 0,
    hub: Annotated[str, typer.Option("--hub")] = "",
    modes: Annotated[str, typer.Option("--modes", help="comma-separated modes: vanilla, tee, zkml")] = "vanilla",
    enclave: Annotated[Path | None, typer.Option("--enclave", help="tee: the socket of `haca enclave serve`")] = None,
    circuits: Annotated[Path | None, typer.Option("--circuits", help="zkml: a folder per model")] = None,
    srs_dir: Annotated[Path | None, typer.Option("--srs-dir", help="zkml: the network's SRS files")] = None,
    provers: Annotated[int, typer.Option("--provers", min=1, help="zkml: prover worker processes")] = 1,
    settle_batches: Annotated[
        bool, typer.Option("--settle-batches", help="settle allowance-paid vanilla/tee receipts in MsgSettleBatch")
    ] = False,
    batch_max: Annotated[int, typer.Option("--batch-max", min=1, max=4096, help="batches: receipts per tx")] = 1000,
    batch_idle: Annotated[float, typer.Option("--batch-idle", help="batches: flush after idle seconds")] = 0.5,
    batch_max_age: Annotated[float, typer.Option("--batch-max-age", help="batches: max seconds waiting")] = 5.0,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="a PostgreSQL DSN: serve as one worker of a node whose workers share this receipt store"
            " (behind `haca node front`; --endpoint is then the front's URL)",
        ),
    ] = "",
    worker: Annotated[str, typer.Option("--worker", help="this worker's name in the shared store")] = "",
    home: HomeOption = None,
) -> None:
    """Serve models over HTTP, register on chain, settle receipts in the background."""
    from haca.node.service import NodeSettings, run_node
    from haca.node.settler import FlushPolicy

    run_node(
        NodeSettings(
            home=client_home(home),
            key=key,
            host=host,
            port=port,
            endpoint=endpoint,
            models=[m for m in models.split(",") if m],
            price=price,
            hub=hub,
            modes=tuple(sorted({m for m in modes.split(",") if m})),
            enclave=enclave,
            circuits=circuits,
            srs_dir=srs_dir,
            provers=provers,
            batches=FlushPolicy(batch_max, batch_idle, batch_max_age) if settle_batches else None,
            store=store,
            worker=worker,
        )
    )


@node_app.command("front")
@cli_command
def node_front(
    workers: Annotated[
        list[str], typer.Option("--worker", help="a worker's URL (`haca node run --store …`); repeat for each")
    ],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
) -> None:
    """One public URL for a node's workers: each request to the live worker with the fewest in flight."""
    from haca.node.front import run_front

    run_front(workers, host, port)
