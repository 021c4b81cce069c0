"""registry module messages: model manifests and inference nodes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from haca.types import fields as f
from haca.types.encoding import canonical_json
from haca.types.tensor import DTYPES
from haca.types.tx import register_msg

MAX_SCHEMA_BYTES = 4096
MAX_NODE_MODELS = 64


class PriceUnit(StrEnum):
    """What a model's price is per: a request, a row of its input, or (an LLM) a token."""

    REQUEST = "request"
    ROW = "row"
    TOKEN = "token"


PRICE_UNITS = tuple(PriceUnit)
MODEL_KINDS = ("onnx", "gguf")  # an ONNX graph (onnxruntime) or a GGUF language model (llama.cpp)
MAX_ROWS_LIMIT = 1 << 20


def request_fee(unit_price: int, price_unit: str, rows: int) -> int:
    """What one request of `rows` rows costs: the price per request, or per row."""
    return unit_price * rows if price_unit == PriceUnit.ROW else unit_price


def token_fee(prompt_price: int, completion_price: int, prompt_tokens: int, completion_tokens: int) -> int:
    """What an LLM request costs: its prompt and completion tokens, each at its own price."""
    return prompt_tokens * prompt_price + completion_tokens * completion_price


def request_rows(shapes: list[tuple[int, ...]]) -> int:
    """A request's rows: the largest leading (batch) dimension among its input tensors (1 for scalars)."""
    return max((shape[0] if shape else 1) for shape in shapes) if shapes else 1


def parse_schema(value: Any, field: str) -> dict[str, Any]:
    """{tensor name: {"dtype", "shape"}}, shape dims >= 1 or -1 for "any"."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{field}: expected an object of named tensors")
    for tensor, spec in value.items():
        spec = f.require_fields(spec, {"dtype", "shape"}, f"{field}.{tensor}")
        if spec["dtype"] not in DTYPES:
            raise ValueError(f"{field}.{tensor}.dtype must be one of {sorted(DTYPES)}")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1) for d in shape
        ):
            raise ValueError(f"{field}.{tensor}.shape: dims must be positive integers or -1")
    if len(canonical_json(value)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"{field}: at most {MAX_SCHEMA_BYTES} bytes")
    return value


@register_msg
@dataclass(frozen=True)
class MsgRegisterModel:
    """Register a model manifest; the signer owns the name. Registering an existing name (as its
    owner) adds the next version."""

    type_name: ClassVar[str] = "registry/register_model"
    eip712_name: ClassVar[str] = "MsgRegisterModel"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [
        ("name", "string"),
        ("modelId", "string"),
        ("inputSchema", "string"),
        ("outputSchema", "string"),
        ("modes", "string[]"),
        ("price", "uint256"),
        ("priceUnit", "string"),
        ("maxRows", "uint32"),
        ("circuit", "string"),
        ("kind", "string"),
        ("completionPrice", "uint256"),
    ]

    name: str
    model_id: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    modes: tuple[str, ...]
    price: int  # per request, per row or per prompt token (price_unit), base units
    price_unit: str = "request"
    # a node refuses requests with more rows than this; for a gguf model (price per token), the
    # most tokens (prompt + completion) one request may use
    max_rows: int = 64
    # zkml: the EZKL circuit's artefacts by hash ({"settings_hash", "vk_hash"}), stored on chain first
    # with MsgRegisterCircuit; None for models without zkml
    circuit: dict[str, str] | None = None
    kind: str = "onnx"  # "onnx" | "gguf" (an LLM: empty schemas, priced per token)
    completion_price: int = 0  # gguf: per completion token (`price` is then per prompt token)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_id": self.model_id,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "modes": list(self.modes),
            "price": str(self.price),
            "price_unit": self.price_unit,
            "max_rows": self.max_rows,
            "circuit": self.circuit,
            "kind": self.kind,
            "completion_price": str(self.completion_price),
        }

    def to_eip712(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modelId": self.model_id,
            "inputSchema": canonical_json(self.input_schema).decode(),
            "outputSchema": canonical_json(self.output_schema).decode(),
            "modes": list(self.modes),
            "price": self.price,
            "priceUnit": self.price_unit,
            "maxRows": self.max_rows,
            "circuit": canonical_json(self.circuit).decode() if self.circuit else "",
            "kind": self.kind,
            "completionPrice": self.completion_price,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgRegisterModel:
        if not isinstance(value, dict):
            raise ValueError("registry/register_model must be an object")
        # kind and completion_price came later: a manifest without them is an ONNX model
        doc = f.require_fields(
            {k: v for k, v in value.items() if k not in ("kind", "completion_price")},
            {
                "name",
                "model_id",
                "input_schema",
                "output_schema",
                "modes",
                "price",
                "price_unit",
                "max_rows",
                "circuit",
            },
            "registry/register_model",
        )
        if doc["price_unit"] not in PRICE_UNITS:
            raise ValueError(f"price_unit: expected one of {list(PRICE_UNITS)}")
        max_rows = f.uint(doc["max_rows"], "max_rows", 32)
        if not 1 <= max_rows <= MAX_ROWS_LIMIT:
            raise ValueError(f"max_rows: expected 1 to {MAX_ROWS_LIMIT}")
        kind = value.get("kind", "onnx")
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind: expected one of {list(MODEL_KINDS)}")
        completion_price = f.uint(value.get("completion_price", "0"), "completion_price")
        modes = f.modes(doc["modes"])
        if kind == "gguf":
            # An LLM takes text and is priced per token; its answers are not proved in zkml.
            if doc["price_unit"] != PriceUnit.TOKEN:
                raise ValueError("price_unit: a gguf model is priced per token")
            if doc["input_schema"] != {} or doc["output_schema"] != {}:
                raise ValueError("input_schema/output_schema: a gguf model takes text: both must be {}")
            if "zkml" in modes:
                raise ValueError("modes: a gguf model cannot be offered in zkml")
            schemas: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        else:
            if doc["price_unit"] == PriceUnit.TOKEN or completion_price:
                raise ValueError("price_unit: only a gguf model is priced per token")
            schemas = (
                parse_schema(doc["input_schema"], "input_schema"),
                parse_schema(doc["output_schema"], "output_schema"),
            )
        return cls(
            f.name(doc["name"]),
            f.model_id(doc["model_id"]),
            schemas[0],
            schemas[1],
            modes,
            f.uint(doc["price"], "price"),
            doc["price_unit"],
            max_rows,
            _circuit(doc["circuit"], "zkml" in modes),
            kind,
            completion_price,
        )


def _circuit(value: Any, zkml: bool) -> dict[str, str] | None:
    if value is None:
        if zkml:
            raise ValueError("circuit: a zkml model names its circuit ({'settings_hash', 'vk_hash'})")
        return None
    # settings and vk are verified against on chain; the compiled circuit and proving key are the hub
    # blobs a node proves with (optional: a node may build the circuit itself)
    names = {"settings_hash", "vk_hash"} | (
        {"compiled_hash", "pk_hash"} if isinstance(value, dict) and "pk_hash" in value else set()
    )
    doc = f.require_fields(value, names, "circuit")
    if not zkml:
        raise ValueError("circuit: only a model offering zkml has a circuit")
    return {k: f.model_id(doc[k], f"circuit.{k}") for k in sorted(names)}


def srs_key(logrows: int) -> bytes:
    """The registry's state key of the SRS hash genesis pins for `logrows` (clients prove it)."""
    return b"registry/srs/" + bytes([logrows])


MAX_CIRCUIT_BYTES = 1 << 20  # a verifying key (EZKL's grow with the circuit: ~80 KB at logrows 15)


@register_msg
@dataclass(frozen=True)
class MsgRegisterCircuit:
    """Store an EZKL circuit's settings and verifying key on chain, by their sha256, so validators
    verify zkml proofs with no network. Anyone may; a model names them by hash.

    `model_id` (the sha256 of the ONNX bytes the circuit was compiled from) records, under the
    signer's name, that the circuit is those bytes' circuit: a manifest may then name a circuit
    only for the model id it was registered for (several registrations may bind one circuit to
    several ids; nobody can take a binding away). "" registers the artefacts unbound (kept for
    registrations made before bindings existed). The chain cannot check the claim itself: it
    would have to recompile the model."""

    type_name: ClassVar[str] = "registry/register_circuit"
    eip712_name: ClassVar[str] = "MsgRegisterCircuit"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("settings", "bytes"), ("vk", "bytes"), ("modelId", "string")]

    settings: bytes
    vk: bytes
    model_id: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = {"settings": "0x" + self.settings.hex(), "vk": "0x" + self.vk.hex()}
        return {**doc, "model_id": self.model_id} if self.model_id else doc

    def to_eip712(self) -> dict[str, Any]:
        return {"settings": self.settings, "vk": self.vk, "modelId": self.model_id}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgRegisterCircuit:
        if not isinstance(value, dict):
            raise ValueError(f"{cls.type_name} must be an object")
        doc = f.require_fields({k: v for k, v in value.items() if k != "model_id"}, {"settings", "vk"}, cls.type_name)
        settings = f.hex_bytes(doc["settings"], "settings", MAX_SCHEMA_BYTES * 16)
        vk = f.hex_bytes(doc["vk"], "vk", MAX_CIRCUIT_BYTES)
        if not settings or not vk:
            raise ValueError("settings and vk must not be empty")
        model_id = f.model_id(value["model_id"]) if "model_id" in value else ""
        return cls(settings, vk, model_id)


@register_msg
@dataclass(frozen=True)
class MsgRegisterNode:
    """Register (or update) the signer as an inference node serving `models` in `modes`."""

    type_name: ClassVar[str] = "registry/register_node"
    eip712_name: ClassVar[str] = "MsgRegisterNode"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [
        ("endpoint", "string"),
        ("modes", "string[]"),
        ("models", "string[]"),
        ("price", "uint256"),
    ]

    endpoint: str
    modes: tuple[str, ...]
    models: tuple[str, ...]  # model names
    price: int  # per inference; the fee charged is max(node price, model price)

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "modes": list(self.modes),
            "models": list(self.models),
            "price": str(self.price),
        }

    def to_eip712(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "modes": list(self.modes), "models": list(self.models), "price": self.price}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgRegisterNode:
        doc = f.require_fields(value, {"endpoint", "modes", "models", "price"}, "registry/register_node")
        endpoint = f.text(doc["endpoint"], "endpoint")
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint: expected an http(s) URL")
        models = doc["models"]
        if not isinstance(models, list) or not models or len(models) > MAX_NODE_MODELS:
            raise ValueError(f"models: expected 1 to {MAX_NODE_MODELS} model names")
        names = tuple(sorted({f.name(m, "models[]") for m in models}))
        if len(names) != len(models):
            raise ValueError("models: a model is listed twice")
        return cls(endpoint, f.modes(doc["modes"]), names, f.uint(doc["price"], "price"))


# --- what the registry stores and answers ---------------------------------------------------------

VISIBILITIES = ("public", "hashed", "private", "fixed")


def _scales(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{field}: expected a list of integers")
    return tuple(value)


@dataclass(frozen=True)
class CircuitRecord:
    """A zkml manifest's circuit as the chain recorded it: the artefacts by hash, what its settings
    say is public (integers and names only), and the SRS genesis pins for its size."""

    settings_hash: str
    vk_hash: str
    logrows: int
    input_visibility: str  # "public" | "hashed" | "private" | "fixed"
    output_visibility: str
    input_scales: tuple[int, ...]  # what a client quantizes its input and dequantizes outputs by
    output_scales: tuple[int, ...]
    srs_hash: str
    compiled_hash: str | None = None  # the hub blobs a node may prove with (optional)
    pk_hash: str | None = None

    def ref(self) -> dict[str, str]:
        """The artefacts by hash, as a manifest names them (MsgRegisterModel.circuit)."""
        out = {"settings_hash": self.settings_hash, "vk_hash": self.vk_hash}
        if self.pk_hash is not None and self.compiled_hash is not None:
            out |= {"compiled_hash": self.compiled_hash, "pk_hash": self.pk_hash}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            **self.ref(),
            "logrows": self.logrows,
            "input_visibility": self.input_visibility,
            "output_visibility": self.output_visibility,
            "input_scales": list(self.input_scales),
            "output_scales": list(self.output_scales),
            "srs_hash": self.srs_hash,
        }

    @classmethod
    def from_json(cls, value: Any) -> CircuitRecord:
        facts = {"logrows", "input_visibility", "output_visibility", "input_scales", "output_scales", "srs_hash"}
        if not isinstance(value, dict):
            raise ValueError("circuit must be an object")
        ref = _circuit({k: v for k, v in value.items() if k not in facts}, True)
        doc = f.require_fields({k: v for k, v in value.items() if k in facts}, facts, "circuit")
        logrows = doc["logrows"]
        if not isinstance(logrows, int) or isinstance(logrows, bool) or not 1 <= logrows <= 28:
            raise ValueError("circuit.logrows: expected an integer from 1 to 28")
        for side in ("input", "output"):
            if doc[f"{side}_visibility"] not in VISIBILITIES:
                raise ValueError(f"circuit.{side}_visibility: expected one of {list(VISIBILITIES)}")
        assert ref is not None
        return cls(
            ref["settings_hash"],
            ref["vk_hash"],
            logrows,
            doc["input_visibility"],
            doc["output_visibility"],
            _scales(doc["input_scales"], "circuit.input_scales"),
            _scales(doc["output_scales"], "circuit.output_scales"),
            f.model_id(doc["srs_hash"], "circuit.srs_hash"),
            ref.get("compiled_hash"),
            ref.get("pk_hash"),
        )


@dataclass(frozen=True)
class ModelManifest:
    """A registered version of a model: the terms it was registered with (MsgRegisterModel's fields,
    the circuit recorded in full), who owns the name, and from which height the terms apply."""

    name: str
    model_id: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    modes: tuple[str, ...]
    price: int
    price_unit: PriceUnit
    max_rows: int
    circuit: CircuitRecord | None
    kind: str
    completion_price: int
    version: int
    owner: str
    height: int  # registered at
    effective_height: int  # its terms apply to receipts served from this height

    @classmethod
    def registered(
        cls, msg: MsgRegisterModel, circuit: CircuitRecord | None, version: int, owner: str, height: int, effective: int
    ) -> ModelManifest:
        return cls(
            msg.name,
            msg.model_id,
            msg.input_schema,
            msg.output_schema,
            msg.modes,
            msg.price,
            PriceUnit(msg.price_unit),
            msg.max_rows,
            circuit,
            msg.kind,
            msg.completion_price,
            version,
            owner,
            height,
            effective,
        )

    def fee(self, rows: int) -> int:
        """What one request of `rows` rows costs at this version's price (not for token pricing)."""
        return request_fee(self.price, self.price_unit, rows)

    def terms(self) -> MsgRegisterModel:
        """The message this version was registered with (its circuit as the manifest named it)."""
        return MsgRegisterModel(
            self.name,
            self.model_id,
            self.input_schema,
            self.output_schema,
            self.modes,
            self.price,
            self.price_unit.value,
            self.max_rows,
            self.circuit.ref() if self.circuit else None,
            self.kind,
            self.completion_price,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self.terms().to_json(),
            "circuit": self.circuit.to_json() if self.circuit else None,
            "version": self.version,
            "owner": self.owner,
            "height": self.height,
            "effective_height": self.effective_height,
        }

    @classmethod
    def from_json(cls, value: Any) -> ModelManifest:
        """ValueError naming the field unless `value` is a manifest as the chain answers it."""
        record = {"version", "owner", "height", "effective_height"}
        if not isinstance(value, dict):
            raise ValueError("a model manifest must be an object")
        doc = f.require_fields({k: v for k, v in value.items() if k in record}, record, "manifest")
        circuit = CircuitRecord.from_json(value["circuit"]) if value.get("circuit") is not None else None
        terms = {k: v for k, v in value.items() if k not in record}
        msg = MsgRegisterModel.from_json({**terms, "circuit": circuit.ref() if circuit else None})
        version = doc["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 1 << 32:
            raise ValueError("version: expected an integer from 1")
        return cls.registered(
            msg,
            circuit,
            version,
            f.address(doc["owner"], "owner"),
            f.height(doc["height"], "height"),
            f.height(doc["effective_height"], "effective_height"),
        )


@dataclass(frozen=True)
class NodeRegistration:
    """An inference node as registered: MsgRegisterNode's fields, its address, and the height of
    its last registration."""

    endpoint: str
    modes: tuple[str, ...]
    models: tuple[str, ...]  # model names
    price: int
    address: str
    height: int

    def to_json(self) -> dict[str, Any]:
        msg = MsgRegisterNode(self.endpoint, self.modes, self.models, self.price)
        return {**msg.to_json(), "address": self.address, "height": self.height}

    @classmethod
    def registered(cls, msg: MsgRegisterNode, address: str, height: int) -> NodeRegistration:
        return cls(msg.endpoint, msg.modes, msg.models, msg.price, address, height)

    @classmethod
    def from_json(cls, value: Any) -> NodeRegistration:
        """ValueError naming the field unless `value` is a node registration as the chain answers it."""
        if not isinstance(value, dict):
            raise ValueError("a node registration must be an object")
        record = {"address", "height"}
        doc = f.require_fields({k: v for k, v in value.items() if k in record}, record, "node")
        msg = MsgRegisterNode.from_json({k: v for k, v in value.items() if k not in record})
        return cls.registered(msg, f.address(doc["address"], "address"), f.height(doc["height"], "height"))
