"""registry state under prefix `registry/`.

registry/params                                  -> params JSON
registry/model/<name>/<version:u32be>            -> manifest JSON
registry/model_latest/<name>                     -> latest version
registry/model_by_id/<sha256 hex>                -> "<name>/<version>": the latest version of the first name
                                                    registered for those bytes
registry/model_names/<sha256 hex>/<name>         -> height that name first registered those bytes
registry/model_at/<sha256 hex>/<name>/<effective:u64be>
                                                 -> "<name>/<version>" in effect for those bytes under that
                                                    name from that height
registry/node/<address:20>                       -> node JSON
registry/blob/<sha256 hex>                       -> a zkml circuit's settings or verifying key (content-addressed)
registry/circuit_for/<model hex>/<settings hex><vk hex> -> the account that declared the circuit is those
                                                    bytes' (MsgRegisterCircuit.model_id)
registry/circuit_bound/<settings hex><vk hex>    -> "1" once the circuit is declared for some model id
registry/srs/<logrows:u8>                        -> sha256 of the SRS file for that size (genesis artefact)

A model id is content, not a claim: anyone may register the same bytes under a name of their own
(issue 19: a first-come id let anyone who saw an upload on the hub register its id under their name
and lock the uploader out of registering its own bytes). A name still belongs to its first owner,
and a receipt is judged by the manifest of the name its node serves: `model_in_effect(id, height,
node)` picks, among the names registered for the id, the one the node's registration lists (a node
may not list two names of one id); without a node, or for a node listing none of them, the first
name registered for the id. The other designs were rejected because the chain cannot tell who
uploaded bytes first (the hub is off chain, and anyone may sign an upload of public bytes), and a
commit-reveal priority is front-run or lost by an uploader who registers late.

A zkml circuit must bind the input and the output (`require_binding_visibility`): a hashed (public
Poseidon hash) or public input, a public output, fixed parameters; anything else proves a
computation on some input the client cannot check. It is refused at MsgRegisterCircuit and when a
manifest names it.

A new version's terms (price, pricing unit, row limit, modes) take effect `price_delay` blocks
after it is registered (the first version at once): a node keeps serving on the terms it quoted,
and a receipt is judged by the terms in effect at the height it was served (its height hint),
so an owner can never change the terms of answers already given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from haca.chain.errors import InvalidMessage, NotFound, Unauthorized
from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.chain.wiring import dependency
from haca.proofs.zk.circuit import visibility_name
from haca.types.encoding import canonical_json
from haca.types.registry import (
    CircuitRecord,
    ModelManifest,
    MsgRegisterModel,
    MsgRegisterNode,
    NodeRegistration,
    srs_key,
)

PREFIX = b"registry/"
MODEL_PREFIX = PREFIX + b"model/"
LATEST_PREFIX = PREFIX + b"model_latest/"
BY_ID_PREFIX = PREFIX + b"model_by_id/"
NAMES_PREFIX = PREFIX + b"model_names/"
AT_PREFIX = PREFIX + b"model_at/"
CIRCUIT_FOR_PREFIX = PREFIX + b"circuit_for/"
CIRCUIT_BOUND_PREFIX = PREFIX + b"circuit_bound/"
NODE_PREFIX = PREFIX + b"node/"
BLOB_PREFIX = PREFIX + b"blob/"
SRS_PREFIX = PREFIX + b"srs/"
PARAMS_KEY = PREFIX + b"params"


@dataclass(frozen=True)
class RegistryParams:
    LIMITS: ClassVar[dict[str, int]] = {"price_delay": 1 << 32}

    price_delay: int = 20  # blocks between registering a new version and its terms taking effect

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def model_key(name: str, version: int) -> bytes:
    return MODEL_PREFIX + name.encode() + b"/" + version.to_bytes(4, "big")


def node_key(address: str) -> bytes:
    return NODE_PREFIX + bytes.fromhex(address[2:])


def blob_key(digest: str) -> bytes:
    return BLOB_PREFIX + digest.removeprefix("sha256:").encode()


def require_binding_visibility(settings: bytes) -> None:
    """ValueError unless the circuit's public instances bind the input and the output: input
    hashed with its hash public (EZKL's {"Hashed": {"hash_is_public": true}}) or public, output
    public, parameters fixed (baked into the verifying key, so the model's weights are the
    circuit's, not the prover's choice). The example circuits (scripts/build_circuits.py) are
    hashed / public / fixed."""
    try:
        run_args = json.loads(settings)["run_args"]
        visibility = {k: run_args[f"{k}_visibility"] for k in ("input", "output", "param")}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"settings: not EZKL settings JSON ({exc})") from None
    names = {k: visibility_name(v) for k, v in visibility.items()}
    hashed_public = (
        isinstance(visibility["input"], dict)
        and (visibility["input"].get("Hashed") or {}).get("hash_is_public") is True
    )
    if not (names["input"] == "Public" or (names["input"] == "Hashed" and hashed_public)):
        raise ValueError(
            f"settings: input visibility {names['input'] or visibility['input']!r} does not bind the input:"
            " a zkml circuit's input must be hashed (its Poseidon hash public) or public"
        )
    if names["output"] != "Public":
        raise ValueError(
            f"settings: output visibility {names['output'] or visibility['output']!r} does not bind the output:"
            " a zkml circuit's output must be public"
        )
    if names["param"] != "Fixed":
        raise ValueError(
            f"settings: param visibility {names['param'] or visibility['param']!r} lets the prover choose the"
            " weights: a zkml circuit's params must be fixed"
        )


def circuit_facts(settings: bytes) -> dict[str, Any]:
    """What a manifest records of an EZKL settings file: its size and what is public (integers and
    names only; the chain never reads a float from it). ValueError when it is not EZKL settings."""
    try:
        doc = json.loads(settings)
        run_args = doc["run_args"]
        logrows = run_args["logrows"]
        visibility = {k: run_args[f"{k}_visibility"] for k in ("input", "output")}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"settings: not EZKL settings JSON ({exc})") from None
    if not isinstance(logrows, int) or isinstance(logrows, bool) or not 1 <= logrows <= 28:
        raise ValueError("settings: run_args.logrows must be an integer from 1 to 28")
    names = {k: visibility_name(v) for k, v in visibility.items()}
    scales = {k: doc.get(f"model_{k}_scales") for k in ("input", "output")}
    if not all(isinstance(v, list) and all(_is_int(x) for x in v) for v in scales.values()):
        raise ValueError("settings: model_input_scales and model_output_scales must be lists of integers")
    if not all(v in ("Public", "Hashed", "Private", "Fixed") for v in names.values()):
        raise ValueError(f"settings: unknown visibility {names}")
    return {
        "logrows": logrows,
        "input_visibility": names["input"].lower(),
        "output_visibility": names["output"].lower(),
        "input_scales": scales["input"],  # what a client quantizes its input and dequantizes outputs by
        "output_scales": scales["output"],
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hex(model_id: str) -> bytes:
    return model_id.removeprefix("sha256:").encode()


def _at_prefix(model_id: str, name: str) -> bytes:
    return AT_PREFIX + _hex(model_id) + b"/" + name.encode() + b"/"


def _circuit_pair(ref: dict[str, str]) -> bytes:
    return _hex(ref["settings_hash"]) + _hex(ref["vk_hash"])


@runtime_checkable
class StakeRequirement(Protocol):
    """What the registry needs from staking: refusing a node bonded below its modes' minimum."""

    def require_stake(self, state: ReadableState, address: str, modes: Iterable[str]) -> None:
        """InsufficientStake when `address` has less bonded than serving `modes` needs."""


class RegistryKeeper:
    def __init__(self, stakes: StakeRequirement) -> None:
        self.stakes = dependency("RegistryKeeper", "stakes", stakes, StakeRequirement)

    def params(self, state: ReadableState) -> RegistryParams:
        raw = state.get(PARAMS_KEY)
        return RegistryParams(**json.loads(raw)) if raw else RegistryParams()

    def set_params(self, state: CachedState, params: RegistryParams) -> None:
        state.set(PARAMS_KEY, canonical_json(params.to_json()))

    # --- zkml circuits and the SRS -------------------------------------------------------------

    def store_blob(self, state: CachedState, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        state.set(blob_key(digest), data)
        return digest

    def bind_circuit(self, state: CachedState, model_id: str, ref: dict[str, str], signer: str) -> None:
        """Record that `signer` declared the circuit `ref` to be the circuit of `model_id`'s bytes."""
        key = CIRCUIT_FOR_PREFIX + _hex(model_id) + b"/" + _circuit_pair(ref)
        if state.get(key) is None:
            state.set(key, signer.encode())
        state.set(CIRCUIT_BOUND_PREFIX + _circuit_pair(ref), b"1")

    def circuit_binding(self, state: ReadableState, model_id: str, ref: dict[str, str]) -> str | None:
        """Who declared circuit `ref` to be `model_id`'s (None if nobody did)."""
        raw = state.get(CIRCUIT_FOR_PREFIX + _hex(model_id) + b"/" + _circuit_pair(ref))
        return raw.decode() if raw is not None else None

    def blob(self, state: ReadableState, digest: str) -> bytes | None:
        return state.get(blob_key(digest))

    def srs_hash(self, state: ReadableState, logrows: int) -> str | None:
        raw = state.get(srs_key(logrows))
        return raw.decode() if raw else None

    def set_srs_hashes(self, state: CachedState, pins: dict[int, str]) -> None:
        for logrows, digest in sorted(pins.items()):
            state.set(srs_key(logrows), digest.encode())

    def srs_hashes(self, state: ReadableState) -> dict[int, str]:
        return {k[len(SRS_PREFIX)]: v.decode() for k, v in state.iter_prefix(SRS_PREFIX)}

    def circuit(self, state: ReadableState, ref: dict[str, str], model_id: str | None = None) -> CircuitRecord:
        """A zkml manifest's circuit record: the pinned hashes, its size and visibility, its SRS.
        With `model_id` (a manifest being registered): InvalidMessage for a circuit whose visibility
        does not bind input and output, Unauthorized for one declared for other model ids only."""
        settings, vk = self.blob(state, ref["settings_hash"]), self.blob(state, ref["vk_hash"])
        if settings is None or vk is None:
            raise NotFound(f"circuit {ref}: register its settings and verifying key first (registry/register_circuit)")
        if model_id is not None:
            try:
                require_binding_visibility(settings)
            except ValueError as exc:
                raise InvalidMessage(str(exc)) from exc
            bound = state.get(CIRCUIT_BOUND_PREFIX + _circuit_pair(ref)) is not None
            if bound and self.circuit_binding(state, model_id, ref) is None:
                raise Unauthorized(
                    f"circuit {ref['vk_hash']} is registered for other model ids, not {model_id}:"
                    " register it for these bytes (registry/register_circuit with model_id) first"
                )
        facts = circuit_facts(settings)
        srs = self.srs_hash(state, facts["logrows"])
        if srs is None:
            raise NotFound(f"no SRS of logrows {facts['logrows']} is pinned in this chain's genesis")
        return CircuitRecord.from_json({**ref, **facts, "srs_hash": srs})

    def latest_version(self, state: ReadableState, name: str) -> int:
        return get_int(state, LATEST_PREFIX + name.encode())

    def model(self, state: ReadableState, name: str, version: int = 0) -> ModelManifest:
        version = version or self.latest_version(state, name)
        raw = state.get(model_key(name, version)) if version else None
        if raw is None:
            raise NotFound(f"no model {name!r}" + (f" version {version}" if version else ""))
        return ModelManifest.from_json(json.loads(raw))

    def model_by_id(self, state: ReadableState, model_id: str) -> ModelManifest:
        """The latest version of the first name registered for these bytes."""
        raw = state.get(BY_ID_PREFIX + _hex(model_id))
        if raw is None:
            raise NotFound(f"no registered model has id {model_id}")
        name, version = raw.decode().rsplit("/", 1)
        return self.model(state, name, int(version))

    def names_of(self, state: ReadableState, model_id: str) -> list[str]:
        """The names these bytes are registered under, first registered first (ties by name)."""
        prefix = NAMES_PREFIX + _hex(model_id) + b"/"
        found = [(int.from_bytes(v, "big"), k[len(prefix) :].decode()) for k, v in state.iter_prefix(prefix)]
        return [name for _, name in sorted(found)]

    def model_in_effect(
        self, state: ReadableState, model_id: str, height: int, node: str | None = None
    ) -> ModelManifest:
        """The manifest whose terms apply to these model bytes at `height` (NotFound before the
        first registration took effect): under the name `node` serves them by, if its registration
        lists one, else under the first name registered for them. A model has few versions, so the
        scan is short."""
        names = self.names_of(state, model_id)
        if node is not None and len(names) > 1:
            with contextlib.suppress(NotFound):
                served = set(self.node(state, node).models)
                names = [n for n in names if n in served] or names
        for name in names[:1]:
            prefix, found = _at_prefix(model_id, name), None
            for key, value in state.iter_prefix(prefix):
                if int.from_bytes(key[len(prefix) :], "big") > height:
                    break
                found = value
            if found is not None:
                ref_name, version = found.decode().rsplit("/", 1)
                return self.model(state, ref_name, int(version))
        raise NotFound(f"no registered model has id {model_id} at height {height}")

    def models(self, state: ReadableState) -> list[ModelManifest]:
        return [
            self.model(state, k[len(LATEST_PREFIX) :].decode(), int(v)) for k, v in state.iter_prefix(LATEST_PREFIX)
        ]

    def register_model(self, state: CachedState, owner: str, msg: MsgRegisterModel, height: int) -> ModelManifest:
        latest = self.latest_version(state, msg.name)
        previous = self.model(state, msg.name, latest) if latest else None
        if previous is not None and previous.owner != owner:
            raise Unauthorized(f"model name {msg.name!r} belongs to another owner")
        # A model id is content: other names may hold the same bytes (see the module docstring). What
        # is per name: the first version of these bytes under this name takes effect at once, a later
        # one after price_delay (terms already quoted for them under this name never change).
        name_key = NAMES_PREFIX + _hex(msg.model_id) + b"/" + msg.name.encode()
        first_here = state.get(name_key) is None
        effective = height if first_here else height + self.params(state).price_delay
        if previous is not None:
            # never before the version it follows takes effect: governance lowering price_delay
            # between two registrations would otherwise put the newer terms in effect first, then the
            # older ones back (issue 23: versions' effective heights reordered)
            effective = max(effective, previous.effective_height)
        circuit = self.circuit(state, msg.circuit, msg.model_id) if msg.circuit else None
        manifest = ModelManifest.registered(msg, circuit, latest + 1, owner, height, effective)
        ref = f"{msg.name}/{latest + 1}".encode()
        state.set(model_key(msg.name, latest + 1), canonical_json(manifest.to_json()))
        set_int(state, LATEST_PREFIX + msg.name.encode(), latest + 1)
        if first_here:
            state.set(name_key, height.to_bytes(8, "big"))
        primary = state.get(BY_ID_PREFIX + _hex(msg.model_id))
        if primary is None or primary.decode().rsplit("/", 1)[0] == msg.name:
            state.set(BY_ID_PREFIX + _hex(msg.model_id), ref)
        state.set(_at_prefix(msg.model_id, msg.name) + effective.to_bytes(8, "big"), ref)
        return manifest

    def node(self, state: ReadableState, address: str) -> NodeRegistration:
        raw = state.get(node_key(address))
        if raw is None:
            raise NotFound(f"{address} is not a registered inference node")
        return NodeRegistration.from_json(json.loads(raw))

    def nodes(self, state: ReadableState) -> list[NodeRegistration]:
        return [NodeRegistration.from_json(json.loads(v)) for _, v in state.iter_prefix(NODE_PREFIX)]

    def register_node(self, state: CachedState, address: str, msg: MsgRegisterNode, height: int) -> NodeRegistration:
        self.stakes.require_stake(state, address, msg.modes)  # InsufficientStake below the modes' minimum
        served: dict[str, str] = {}
        for name in msg.models:
            manifest = self.model(state, name)
            if not set(manifest.modes) & set(msg.modes):
                raise Unauthorized(
                    f"model {name!r} allows modes {list(manifest.modes)}, the node offers {list(msg.modes)}"
                )
            # its receipts name the bytes, not the name: one name per model id, or they are ambiguous
            if (other := served.setdefault(manifest.model_id, name)) != name:
                raise InvalidMessage(f"models {other!r} and {name!r} are the same bytes ({manifest.model_id})")
        node = NodeRegistration.registered(msg, address, height)
        state.set(node_key(address), canonical_json(node.to_json()))
        return node
