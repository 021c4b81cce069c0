"""registry queries: /registry/model (data "name" or "name@version"), /registry/models,
/registry/model_in_effect (data "sha256:<hex>@height[@node]": the terms that apply at that height, under
the name that node serves those bytes by),
/registry/node (data address), /registry/nodes."""

from __future__ import annotations

from typing import Any

from haca.chain.errors import InvalidQuery, NotFound
from haca.chain.modules.registry.keeper import (
    LATEST_PREFIX,
    PARAMS_KEY,
    RegistryKeeper,
    blob_key,
    model_key,
    node_key,
    srs_key,
)
from haca.chain.query_args import address_arg
from haca.chain.state import ReadableState
from haca.types import fields


def query_model(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    name, _, version_text = data.decode(errors="replace").partition("@")
    if version_text and not (version_text.isascii() and version_text.isdigit() and len(version_text) <= 9):
        raise InvalidQuery("query data must be 'name' or 'name@version' (version a decimal number)")
    manifest = registry.model(state, name, int(version_text or 0))
    return manifest.to_json(), [model_key(name, manifest.version)]


def query_model_in_effect(
    registry: RegistryKeeper, state: ReadableState, data: bytes
) -> tuple[dict[str, Any], list[bytes]]:
    model_id, _, rest = data.decode(errors="replace").partition("@")
    height_text, at, node_text = rest.partition("@")
    try:
        fields.model_id(model_id)
    except ValueError as exc:
        raise InvalidQuery(f"query data must be 'sha256:<hex>@height[@node]': {exc}") from exc
    if not (height_text.isascii() and height_text.isdigit() and len(height_text) <= 19):
        raise InvalidQuery("query data must be 'sha256:<hex>@height[@node]' (height a decimal number)")
    node = address_arg(node_text.encode()) if at else None  # the name that node serves these bytes by
    manifest = registry.model_in_effect(state, model_id, int(height_text), node)
    return manifest.to_json(), [model_key(manifest.name, manifest.version)]


def query_params(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    return registry.params(state).to_json(), [PARAMS_KEY]


def query_models(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    models = registry.models(state)
    return {"models": [m.to_json() for m in models]}, [LATEST_PREFIX + m.name.encode() for m in models]


def query_node(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    address = address_arg(data)
    return registry.node(state, address).to_json(), [node_key(address)]


def query_nodes(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    nodes = registry.nodes(state)
    return {"nodes": [n.to_json() for n in nodes]}, [node_key(n.address) for n in nodes]


def query_srs(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The SRS files (by sha256, per logrows) pinned in genesis."""
    pins = registry.srs_hashes(state)
    return {"srs": {str(k): v for k, v in sorted(pins.items())}}, [srs_key(k) for k in sorted(pins)]


def query_blob(registry: RegistryKeeper, state: ReadableState, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """A circuit artefact (settings or verifying key) by its sha256 id, as hex."""
    digest = data.decode(errors="replace")
    try:
        fields.model_id(digest, "id")
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from exc
    raw = registry.blob(state, digest)
    if raw is None:
        raise NotFound(f"no circuit artefact {digest}")
    return {"id": digest, "data": "0x" + raw.hex()}, [blob_key(digest)]
