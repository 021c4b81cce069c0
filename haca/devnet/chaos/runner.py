"""A chaos run: load on, perturbations spread over the duration, load off, settlement drained,
then the chain read back and checked (haca.devnet.chaos.checks)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from haca.client.config import ClientConfig, KeyStore
from haca.client.errors import HacaError
from haca.client.sdk import Client
from haca.crypto.keys import PrivateKey
from haca.devnet import services
from haca.devnet.chaos import observe
from haca.devnet.chaos.checks import (
    ChaosReport,
    check_app_hashes,
    check_receipts,
    check_supply,
    check_txs,
    largest_block_gap,
)
from haca.devnet.chaos.load import (
    Endpoints,
    LoadGenerator,
    LoadRecorder,
    TransferSender,
    batch_step,
    chat_step,
    inference_step,
)
from haca.devnet.chaos.perturb import BatchNode, ChaosContext, Perturbation, resume_all
from haca.devnet.chaos.records import SentTx, StepRecord
from haca.devnet.chaos.scenarios import SCENARIOS
from haca.devnet.layout import example_models_dir
from haca.devnet.network import Devnet, DevnetError, rpc_height, up
from haca.devnet.processes import free_ports, spawn
from haca.types.inference import MsgDeposit
from haca.types.payment import SpendingAllowance, encode_api_key

log = structlog.get_logger("haca.chaos")

ESCROW = 10**16  # what each paying client deposits for its node
IRIS = [[5.1, 3.5, 1.4, 0.2]]


@dataclass(frozen=True)
class ChaosOptions:
    scenario: str
    duration_s: float
    home: Path
    min_slot_s: float = 40.0  # a long run repeats the scenario's list while each step gets this much
    drain_timeout_s: float = 300.0  # settlement of what was served, after the load stops
    vanilla_interval_s: float = 0.5
    tee_interval_s: float = 1.0
    batch_interval_s: float = 0.5
    transfer_interval_s: float = 0.5
    zkml_interval_s: float = 60.0  # a proof takes ~50 s of a loaded 2-core machine: few
    llm_interval_s: float = 12.0
    llm_max_tokens: int = 4
    block_time: str = "400ms"  # for a devnet the run creates


def plan(scenario: str, duration_s: float, min_slot_s: float) -> list[Perturbation]:
    """The scenario's perturbations, its list repeated while each step still gets `min_slot_s`."""
    if scenario not in SCENARIOS:
        raise DevnetError(f"no scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
    make = SCENARIOS[scenario]
    steps = make()
    rounds = max(1, int(duration_s // (len(steps) * min_slot_s)))
    for _ in range(rounds - 1):
        steps += make()
    return steps


STATE_MACHINE_SOURCES = ("chain", "types", "proofs", "crypto")  # what a validator's app runs


def state_machine_digest() -> str:
    """A hash of the app's source files in this tree. A validator restarted during a run imports
    the tree as it is then: if it changed, the network runs two versions of the state machine and
    app hashes may differ for that reason alone (the report says so)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in STATE_MACHINE_SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_chaos(options: ChaosOptions, progress: Callable[[str], None] | None = None) -> ChaosReport:
    say = progress or (lambda text: log.info("chaos", message=text))
    steps = plan(options.scenario, options.duration_s, options.min_slot_s)
    net = Devnet(options.home)
    created = not net.exists()
    recorder = LoadRecorder()
    with ExitStack() as cleanup:
        if created:  # a devnet the run made is the run's to stop, whatever happens
            cleanup.callback(_stop_if_made, net)
        say("starting the devnet" if created else "resuming the devnet")
        up(options.home, 4, "haca-devnet", options.block_time, inference=True)
        ctx, load, endpoints = _prepare(net, options, recorder, cleanup, say)
        cleanup.callback(resume_all, ctx)
        cleanup.callback(load.stop)  # (a second stop is a no-op)
        start_height = max(rpc_height(n.rpc) for n in net.load().nodes)
        code_at_start = state_machine_digest()
        started = time.monotonic()
        load.start()
        records = _perturb(ctx, steps, options.duration_s, started, say)
        say("stopping the load")
        load.stop()
        _drain(ctx, endpoints, options.drain_timeout_s, say)
        report = _check(ctx, options, recorder, records, start_height, time.monotonic() - started, say)
        report.code_changed = state_machine_digest() != code_at_start
    return report


def _stop_if_made(net: Devnet) -> None:
    if net.exists():
        net.stop()


def _prepare(
    net: Devnet, options: ChaosOptions, recorder: LoadRecorder, cleanup: ExitStack, say: Callable[[str], None]
) -> tuple[ChaosContext, LoadGenerator, Endpoints]:
    home = options.home
    config = ClientConfig.load(home)
    keys = KeyStore(home)
    state = net.load()
    node0 = next(s for s in state.services if s.kind == "node")
    endpoints = Endpoints(tuple(config.rpc), config.chain_id, tuple(config.validators), node0.url)
    chain = endpoints.chain()
    cleanup.callback(chain.close)

    def key(name: str) -> PrivateKey:
        return keys.get(name).key

    def client(name: str, first_rpc: int) -> Client:
        made = Client(node0.url, key(name), endpoints.chain(first_rpc), timeout=60, node_address=node0.address)
        cleanup.callback(made.close)
        return made

    zkml_model = next(iter(services.example_circuits()), None)
    zkml_input = _example_input(zkml_model) if zkml_model else None
    llm = services.EXAMPLE_LLM if _registered(chain, services.EXAMPLE_LLM) else None

    say("funding the load's clients")
    payers = {"vanilla": client("dev1", 0), "tee": client("dev2", 1), "probe": client("dev7", 0)}
    if zkml_model:
        payers["zkml"] = client("dev3", 2)
    if llm:
        payers["llm"] = client("dev4", 3)
    for payer in payers.values():
        outcome = payer.deposit(ESCROW)
        recorder.tx(SentTx(outcome.hash, "deposit", True))

    say("starting a node that settles in batches")
    batch_node, api_key = _batch_node(net, endpoints, key("dev8"), key("dev6"), recorder, say)
    cleanup.callback(batch_node.stop)
    _wait_blocks(chain, 2)  # the nodes read the deposits from a validator maybe a block behind

    ctx = ChaosContext(
        net=net,
        chain=chain,
        recorder=recorder,
        authority=key("dev0"),
        probe=payers["probe"],
        zkml_model=zkml_model,
        zkml_input=zkml_input,
        batch_node=batch_node,
        clients=[p.key.address for p in payers.values()] + [key("dev6").address],
        client_names={
            **{p.key.address.lower(): f"{label} (node0)" for label, p in payers.items()},
            key("dev6").address.lower(): "batch (batch node)",
        },
    )
    load = LoadGenerator(recorder)
    load.add(
        "vanilla", options.vanilla_interval_s, inference_step(payers["vanilla"], recorder, "iris", IRIS, "vanilla")
    )
    load.add("tee", options.tee_interval_s, inference_step(payers["tee"], recorder, "iris", IRIS, "tee"))
    if zkml_model:
        step = inference_step(payers["zkml"], recorder, zkml_model, zkml_input, "zkml")
        load.add("zkml", options.zkml_interval_s, step)
    if llm:
        load.add(
            "llm", options.llm_interval_s, chat_step(payers["llm"], recorder, llm, "vanilla", options.llm_max_tokens)
        )
    load.add("batch", options.batch_interval_s, batch_step(batch_node.url, api_key, recorder, "iris", IRIS))
    sender = TransferSender(endpoints, key("dev5"), key("dev9").address, recorder)
    load.add("transfer", options.transfer_interval_s, sender.step, sender.close)
    return ctx, load, Endpoints(endpoints.rpcs, endpoints.chain_id, endpoints.validators, node0.url, batch_node.url)


def _example_input(model: str) -> Any:
    manifest = json.loads((example_models_dir() / "manifest.json").read_text())
    return next(m["example_input"] for m in manifest["models"] if m["name"] == model)


def _registered(chain: Any, model: str) -> bool:
    with suppress(HacaError):
        chain.query("/registry/model", model.encode())
        return True
    return False


def _wait_blocks(chain: Any, blocks: int, timeout: float = 60.0) -> None:
    target = chain.rpc.height() + blocks
    deadline = time.monotonic() + timeout
    while chain.rpc.height() < target and time.monotonic() < deadline:
        time.sleep(0.2)


def _batch_node(
    net: Devnet,
    endpoints: Endpoints,
    node_key: PrivateKey,
    payer: PrivateKey,
    recorder: LoadRecorder,
    say: Callable[[str], None],
) -> tuple[BatchNode, str]:
    """dev8 as a vanilla node for iris settling allowance-paid receipts in MsgSettleBatch (small,
    quick batches), and dev6's API key for it (an allowance over an escrow deposit)."""
    work = net.dir / "chaos" / "batch-node"
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "haca.node.main", "--home", str(net.home), "--key", "dev8", "--port", str(port)]
    args += ["--models", "iris", "--modes", "vanilla", "--data-dir", str(work / "data")]
    args += ["--settle-batches", "--batch-max", "64", "--batch-idle", "1", "--batch-max-age", "4"]

    def start() -> int:
        pid = spawn(args, work / "node.log")
        services.wait_http(f"{url}/healthz", pid, "batching node", work / "node.log", timeout=180)
        return pid

    node = BatchNode(start, url)
    chain = endpoints.chain()
    try:
        outcome = chain.send_msgs(payer, (MsgDeposit(node_key.address, ESCROW),))
        assert not isinstance(outcome, str)
        recorder.tx(SentTx(outcome.hash, "deposit", True))
    finally:
        chain.close()
    allowance = SpendingAllowance(
        endpoints.chain_id, payer.address, node_key.address, ESCROW // 2, 10**9, 1, max_per_request=10**8
    )
    return node, encode_api_key(allowance, allowance.sign(payer))


def _perturb(
    ctx: ChaosContext, steps: list[Perturbation], duration: float, started: float, say: Callable[[str], None]
) -> list[StepRecord]:
    slot = duration / len(steps)
    lead = min(5.0, slot / 4)  # load runs a moment before the first fault
    records = []
    for i, step in enumerate(steps):
        _sleep_until(started + lead + i * slot)
        say(f"[{i + 1}/{len(steps)}] {step.name}")
        records.append(step.run(ctx))
        resume_all(ctx)
    _sleep_until(started + duration)
    return records


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def _drain(ctx: ChaosContext, endpoints: Endpoints, timeout: float, say: Callable[[str], None]) -> None:
    """Wait (bounded) for the nodes to settle what they served and the validators to converge."""
    say("waiting for settlement to drain")
    deadline = time.monotonic() + timeout
    for url in (endpoints.node_url, endpoints.batch_node_url):
        while time.monotonic() < deadline:
            try:
                if int(httpx.get(f"{url}/healthz", timeout=5).json()["pending_receipts"]) == 0:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1.0)
    while time.monotonic() < deadline:
        heights = [rpc_height(n.rpc) for n in ctx.state().nodes]
        if min(heights) > 0 and max(heights) - min(heights) <= 1:
            break
        time.sleep(0.5)
    _wait_blocks(ctx.chain, 2)  # the last settlements committed everywhere


def _check(
    ctx: ChaosContext,
    options: ChaosOptions,
    recorder: LoadRecorder,
    records: list[StepRecord],
    start_height: int,
    elapsed: float,
    say: Callable[[str], None],
) -> ChaosReport:
    say("checking")
    state = ctx.state()
    txs, receipts, load_stats = recorder.snapshot()
    tops = {n.name: rpc_height(n.rpc) for n in state.nodes}
    top = min(tops.values()) - 1  # committed at every validator: the supply is read there
    with httpx.Client() as http:
        all_headers = []
        tx_counts: dict[int, int] = {}
        for node in state.nodes:  # each up to its own height: one stuck behind shows as such
            found, counts = observe.headers(http, node.name, node.rpc, 1, tops[node.name])
            all_headers += found
            if len(counts) > len(tx_counts):
                tx_counts = counts
        busy = sorted(h for h, n in tx_counts.items() if n)
        settled, payers = observe.settlements(http, ctx.chain, state.nodes[0].rpc, busy)
        codes = observe.tx_codes(http, [n.rpc for n in state.nodes], [t.hash for t in txs if t.accepted])
        nodes = {s.address.lower(): s.url for s in state.services if s.kind == "node"}
        if ctx.batch_node is not None:
            nodes[_batch_address(ctx)] = ctx.batch_node.url
        unsettled = [(r.node, r.receipt_id) for r in receipts if not settled.get(r.receipt_id)]
        refusals = observe.node_refusals(http, nodes, unsettled)
    accounts = observe.supply_accounts(state, ctx.net.home)
    balances, total, burned = observe.balances_at(ctx.chain, accounts, top)
    own = [h for h in all_headers if h.validator == state.nodes[0].name and h.height >= start_height]
    return ChaosReport(
        scenario=options.scenario,
        duration_s=elapsed,
        txs=check_txs(txs, codes),
        receipts=check_receipts(receipts, settled, refusals, tuple(dict.fromkeys(ctx.excused)), payers, ctx.clients),
        app_hashes=check_app_hashes(all_headers, [n.name for n in state.nodes]),
        block_gap=largest_block_gap(own),
        supply=check_supply(balances, total, burned, observe.genesis_minted(state), top),
        steps=records,
        load=load_stats,
        notes=[
            f"heights {start_height}..{top} under load; app hashes compared from 1",
            "paying clients: " + ", ".join(f"{name} {address}" for address, name in ctx.client_names.items()),
        ],
    )


def _batch_address(ctx: ChaosContext) -> str:
    return KeyStore(ctx.net.home).get("dev8").address.lower()
