"""The chain's records as a client reads them: each answer parsed once, into the typed record the
chain's keepers return (haca.types), so the rest of the client reads attributes, not string keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from haca.client.errors import ProofInvalid, QueryFailed
from haca.types.registry import ModelManifest, NodeRegistration

Record = TypeVar("Record")


class ProvenReader(Protocol):
    """What reads the chain's state with proofs (ChainClient)."""

    def query_proven_value(self, path: str, data: bytes = b"") -> tuple[dict[str, Any], int]: ...


class Querier(Protocol):
    """What reads the chain's state without proofs (ChainClient, a node's chain view)."""

    def query(self, path: str, data: bytes = b"") -> Any: ...


def parse_answer(parse: Callable[[Any], Record], doc: Any, what: str) -> Record:
    """`parse(doc)`, or QueryFailed naming what the chain's answer lacked."""
    try:
        return parse(doc)
    except (ValueError, TypeError, KeyError) as exc:
        raise QueryFailed(f"the chain's {what} is malformed: {exc}") from exc


def proven_manifest(chain: ProvenReader, model_id: str, height: int, node: str) -> tuple[ModelManifest, int]:
    """The terms in effect for `model_id` at `height` under the name `node` serves it by, as a state
    proof shows them, and the height proven. The proof shows a stored manifest, not which one the
    RPC chose: ProofInvalid when it is another model's, or not in effect by `height`."""
    at = f"{model_id}@{height}@{node.lower()}"
    doc, proven = chain.query_proven_value("/registry/model_in_effect", at.encode())
    manifest = parse_answer(ModelManifest.from_json, doc, "model manifest")
    if manifest.model_id != model_id:
        raise ProofInvalid(f"the chain answered the terms of model {manifest.model_id}, not {model_id}")
    if manifest.effective_height > height:
        raise ProofInvalid(f"the proven manifest takes effect at height {manifest.effective_height}, after {height}")
    return manifest, proven


def proven_node(chain: ProvenReader, address: str) -> NodeRegistration:
    """The node's registration as a state proof shows it; ProofInvalid when it is another node's."""
    doc, _ = chain.query_proven_value("/registry/node", address.lower().encode())
    node = parse_answer(NodeRegistration.from_json, doc, "node registration")
    if node.address != address.lower():
        raise ProofInvalid(f"the proven registration is for {node.address}, not the node {address}")
    return node


def manifest(chain: Querier, name: str) -> ModelManifest:
    """The latest version of the model `name` (unproven: for tools and the node's own start-up)."""
    return parse_answer(ModelManifest.from_json, chain.query("/registry/model", name.encode()), "model manifest")


def manifests(chain: Querier) -> list[ModelManifest]:
    """Every model's latest version (unproven)."""
    answer = chain.query("/registry/models")
    return parse_answer(lambda doc: [ModelManifest.from_json(m) for m in doc["models"]], answer, "model list")


def node_registration(chain: Querier, address: str) -> NodeRegistration:
    """A node's registration (unproven)."""
    answer = chain.query("/registry/node", address.lower().encode())
    return parse_answer(NodeRegistration.from_json, answer, "node registration")


def node_registrations(chain: Querier) -> list[NodeRegistration]:
    """Every registered node (unproven)."""
    answer = chain.query("/registry/nodes")
    return parse_answer(lambda doc: [NodeRegistration.from_json(n) for n in doc["nodes"]], answer, "node list")
