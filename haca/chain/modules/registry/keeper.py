"""registry state under prefix `registry/`.

registry/params                                  -> params JSON
registry/model/<name>/<version:u32be>            -> manifest JSON
registry/model_latest/<name>                     -> latest version
registry/model_by_id/<sha256 hex>                -> "<name>/<version>" of the latest registration of those bytes
registry/model_at/<sha256 hex>/<effective:u64be> -> "<name>/<version>" in effect for those bytes from that height
registry/node/<address:20>                       -> node JSON
registry/blob/<sha256 hex>                       -> a zkml circuit's settings or verifying key (content-addressed)
registry/srs/<logrows:u8>                        -> sha256 of the SRS file for that size (genesis artefact)

A new version's terms (price, pricing unit, row limit, modes) take effect `price_delay` blocks
after it is registered (the first version at once): a node keeps serving on the terms it quoted,
and a receipt is judged by the terms in effect at the height it was served (its height hint),
so an owner can never change the terms of answers already given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from haca.chain.errors import NotFound, Unauthorized
from haca.chain.state import CachedState, ReadableState, get_int, set_int
from haca.proofs.zk.circuit import visibility_name
from haca.types.encoding import canonical_json
from haca.types.registry import MsgRegisterModel, MsgRegisterNode, srs_key

PREFIX = b"registry/"
MODEL_PREFIX = PREFIX + b"model/"
LATEST_PREFIX = PREFIX + b"model_latest/"
BY_ID_PREFIX = PREFIX + b"model_by_id/"
AT_PREFIX = PREFIX + b"model_at/"
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


def _at_prefix(model_id: str) -> bytes:
    return AT_PREFIX + model_id.removeprefix("sha256:").encode() + b"/"


class RegistryKeeper:
    def __init__(self) -> None:
        # Refuses a node whose bond is below the minimum stake of its modes (staking's; set at wiring).
        self.stake_check: Callable[[ReadableState, str, tuple[str, ...]], None] = lambda state, address, modes: None

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

    def circuit(self, state: ReadableState, ref: dict[str, str]) -> dict[str, Any]:
        """A zkml manifest's circuit record: the pinned hashes, its size and visibility, its SRS."""
        settings, vk = self.blob(state, ref["settings_hash"]), self.blob(state, ref["vk_hash"])
        if settings is None or vk is None:
            raise NotFound(f"circuit {ref}: register its settings and verifying key first (registry/register_circuit)")
        facts = circuit_facts(settings)
        srs = self.srs_hash(state, facts["logrows"])
        if srs is None:
            raise NotFound(f"no SRS of logrows {facts['logrows']} is pinned in this chain's genesis")
        return {**ref, **facts, "srs_hash": srs}

    def latest_version(self, state: ReadableState, name: str) -> int:
        return get_int(state, LATEST_PREFIX + name.encode())

    def model(self, state: ReadableState, name: str, version: int = 0) -> dict[str, Any]:
        version = version or self.latest_version(state, name)
        raw = state.get(model_key(name, version)) if version else None
        if raw is None:
            raise NotFound(f"no model {name!r}" + (f" version {version}" if version else ""))
        manifest: dict[str, Any] = json.loads(raw)
        return manifest

    def model_by_id(self, state: ReadableState, model_id: str) -> dict[str, Any]:
        raw = state.get(BY_ID_PREFIX + model_id.removeprefix("sha256:").encode())
        if raw is None:
            raise NotFound(f"no registered model has id {model_id}")
        name, version = raw.decode().rsplit("/", 1)
        return self.model(state, name, int(version))

    def model_in_effect(self, state: ReadableState, model_id: str, height: int) -> dict[str, Any]:
        """The manifest whose terms apply to these model bytes at `height` (NotFound before the
        first registration took effect). A model has few versions, so the scan is short."""
        prefix, found = _at_prefix(model_id), None
        for key, value in state.iter_prefix(prefix):
            if int.from_bytes(key[len(prefix) :], "big") > height:
                break
            found = value
        if found is None:
            raise NotFound(f"no registered model has id {model_id} at height {height}")
        name, version = found.decode().rsplit("/", 1)
        return self.model(state, name, int(version))

    def models(self, state: ReadableState) -> list[dict[str, Any]]:
        return [
            self.model(state, k[len(LATEST_PREFIX) :].decode(), int(v)) for k, v in state.iter_prefix(LATEST_PREFIX)
        ]

    def register_model(self, state: CachedState, owner: str, msg: MsgRegisterModel, height: int) -> dict[str, Any]:
        latest = self.latest_version(state, msg.name)
        if latest and self.model(state, msg.name, latest)["owner"] != owner:
            raise Unauthorized(f"model name {msg.name!r} belongs to another owner")
        # Receipts name models by id, so an id stands for one model name, forever.
        registered = state.get(BY_ID_PREFIX + msg.model_id.removeprefix("sha256:").encode())
        if registered is not None and registered.decode().rsplit("/", 1)[0] != msg.name:
            raise Unauthorized(f"model id {msg.model_id} is already registered as {registered.decode()}")
        effective = height if registered is None else height + self.params(state).price_delay
        circuit = self.circuit(state, msg.circuit) if msg.circuit else None
        manifest = {
            **msg.to_json(),
            "circuit": circuit,
            "version": latest + 1,
            "owner": owner,
            "height": height,
            "effective_height": effective,
        }
        ref = f"{msg.name}/{latest + 1}".encode()
        state.set(model_key(msg.name, latest + 1), canonical_json(manifest))
        set_int(state, LATEST_PREFIX + msg.name.encode(), latest + 1)
        state.set(BY_ID_PREFIX + msg.model_id.removeprefix("sha256:").encode(), ref)
        state.set(_at_prefix(msg.model_id) + effective.to_bytes(8, "big"), ref)
        return manifest

    def node(self, state: ReadableState, address: str) -> dict[str, Any]:
        raw = state.get(node_key(address))
        if raw is None:
            raise NotFound(f"{address} is not a registered inference node")
        node: dict[str, Any] = json.loads(raw)
        return node

    def nodes(self, state: ReadableState) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in state.iter_prefix(NODE_PREFIX)]

    def register_node(self, state: CachedState, address: str, msg: MsgRegisterNode, height: int) -> dict[str, Any]:
        self.stake_check(state, address, msg.modes)  # InsufficientStake below the modes' minimum
        for name in msg.models:
            manifest = self.model(state, name)
            if not set(manifest["modes"]) & set(msg.modes):
                raise Unauthorized(
                    f"model {name!r} allows modes {manifest['modes']}, the node offers {list(msg.modes)}"
                )
        node = {**msg.to_json(), "address": address, "height": height}
        state.set(node_key(address), canonical_json(node))
        return node
