"""`haca model`: upload model files to the hub and register their manifests on chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from haca.cli.common import HomeOption, JsonOption, cli_command, client_home, console, emit, err_console, keystore
from haca.client import records
from haca.client.chain import ChainClient, TxOutcome
from haca.client.config import ClientConfig, StoredKey, connect
from haca.client.errors import ConfigError, HacaError, NotFound, QueryFailed
from haca.client.records import parse_answer
from haca.client.rpc import b64
from haca.crypto.keys import PrivateKey
from haca.hub.client import HubClient
from haca.hub.schema import onnx_schemas
from haca.hub.store import BlobInfo
from haca.types import codes
from haca.types import fields as f
from haca.types.registry import ModelManifest, MsgRegisterModel

model_app = typer.Typer(help="Upload models to the hub and register their manifests on chain.", no_args_is_help=True)

ABCI_NOT_FOUND = codes.NOT_FOUND
PROGRESS_MIN_BYTES = 8 << 20  # show a progress bar for uploads from this size on
PLACEHOLDER_ID = "sha256:" + "0" * 64

HubOption = Annotated[
    str, typer.Option("--hub", help='hub URL (default: "hub" under "extra" in the home\'s config.json)')
]
FromOption = Annotated[
    str, typer.Option("--from", help="key name or address that owns the model (default: the home's default key)")
]
UploaderOption = Annotated[
    str,
    typer.Option("--from", help="key name or address that signs the upload (default: the home's default key)"),
]
FileOption = Annotated[
    Path, typer.Option("--file", exists=True, dir_okay=False, readable=True, help="the ONNX or GGUF model file")
]


class NoHubConfigured(ConfigError):
    code = "no_hub"


class NoUploadKey(ConfigError):
    code = "no_key"


class ModelExists(HacaError):
    code = "model_exists"


class NotOwner(HacaError):
    code = "not_owner"


# --- helpers ----------------------------------------------------------------------------------


def resolve_hub(hub: str, home: Path | None, config: ClientConfig | None = None) -> str:
    """--hub, else `extra["hub"]` of the home's client config, else NoHubConfigured."""
    if hub:
        return hub
    resolved = client_home(home)
    if config is None:
        try:
            config = ClientConfig.load(resolved)
        except ConfigError:
            config = None
    url = config.extra.get("hub") if config is not None else None
    if isinstance(url, str) and url:
        return url
    raise NoHubConfigured(f'no hub configured: pass --hub URL or set "hub" under "extra" in {resolved / "config.json"}')


DEFAULT_MAX_ROWS = 64
PriceUnitOption = Annotated[str, typer.Option("--price-unit", help="what --price is per: request or row")]
CalibrationOption = Annotated[
    str | None, typer.Option("--calibration", help="zkml: an example input (JSON, one row) to calibrate the circuit")
]

MaxRowsOption = Annotated[
    int | None,
    typer.Option("--max-rows", min=1, help="most rows a node serves in one request (gguf: tokens, the context; 2048)"),
]
CompletionPriceOption = Annotated[
    int | None, typer.Option("--completion-price", min=0, help="gguf: price per completion token (default: --price)")
]
DEFAULT_CONTEXT = 2048
GGUF_MAGIC = b"GGUF"


def file_kind(path: Path) -> str:
    """ "gguf" for a GGUF language model (by its magic bytes), else "onnx"."""
    with path.open("rb") as fh:
        return "gguf" if fh.read(4) == GGUF_MAGIC else "onnx"


def parse_modes(text: str) -> tuple[str, ...]:
    return f.modes([m.strip() for m in text.split(",") if m.strip()], "--modes")


def manifest_json(manifest: ModelManifest) -> dict[str, Any]:
    """A chain manifest for display: `model_id` as `id`, prices as ints, the rest as stored."""
    stored = manifest.to_json()
    shown: dict[str, Any] = {
        "id": manifest.model_id,
        "name": manifest.name,
        "version": manifest.version,
        "modes": list(manifest.modes),
        "price": manifest.price,
        "price_unit": manifest.price_unit.value,
        "max_rows": manifest.max_rows,
        "effective_height": manifest.effective_height,
        "owner": manifest.owner,
        "input_schema": manifest.input_schema,
        "output_schema": manifest.output_schema,
        "completion_price": manifest.completion_price,
    }
    return shown | {k: v for k, v in stored.items() if k != "model_id" and k not in shown}


def query_model(client: ChainClient, ref: str) -> ModelManifest | None:
    """The manifest for "name" (latest) or "name@version"; None if there is none."""
    result = client.rpc.call("abci_query", path="/registry/model", data=ref.encode().hex(), height="0", prove=False)
    response = result["response"]
    code = int(response.get("code", 0))
    if code == ABCI_NOT_FOUND:
        return None
    if code:
        raise QueryFailed(f"/registry/model {ref}: {response.get('log', '')}")
    return parse_answer(ModelManifest.from_json, json.loads(b64(response["value"])), "model manifest")


def upload_key(from_: str, home: Path | None) -> StoredKey:
    """The key that signs an upload: --from, else the home's default key."""
    name = from_
    if not name:
        try:
            name = ClientConfig.load(client_home(home)).default_key
        except ConfigError:
            name = ""
    if not name:
        raise NoUploadKey("uploads are signed by an uploader account: pass --from KEY or set a default key")
    return keystore(home).get(name)


def upload_file(url: str, path: Path, json_out: bool, key: PrivateKey) -> BlobInfo:
    """Upload, signed by `key`, with a progress bar on stderr for big files in human mode."""
    size = path.stat().st_size
    with HubClient(url, key=key) as hub:
        if json_out or size < PROGRESS_MIN_BYTES:
            return hub.upload_info(path)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"uploading {path.name}", total=size)
            return hub.upload_info(path, lambda n: progress.advance(task, n))


def build_and_publish_circuit(
    client: ChainClient,
    config: ClientConfig,
    home: Path | None,
    hub_url: str,
    key: Any,
    file: Path,
    calibration: str | None,
    json_out: bool,
) -> dict[str, str]:
    """zkml: compile FILE into an EZKL circuit against the network's SRS (its pinned files, never
    downloaded), put its four artefacts in the hub and its settings and verifying key on chain."""
    from haca.proofs.zk.circuit import build_circuit
    from haca.proofs.zk.srs import pinned_srs
    from haca.types.registry import MsgRegisterCircuit

    if calibration is None:
        raise HacaError("--modes zkml needs --calibration JSON: an example input (one row) to calibrate the circuit on")
    try:
        example = json.loads(calibration)
    except json.JSONDecodeError as exc:
        raise HacaError(f"--calibration is not JSON: {exc}") from exc
    rows = example if isinstance(example, list) and example and isinstance(example[0], list) else [example]
    srs_dir = config.extra.get("srs_dir")
    if not srs_dir:
        raise HacaError("no SRS directory in the client config ('srs_dir'): the network's genesis SRS files")
    pins = client.query("/registry/srs")["srs"]

    def srs_for(logrows: int) -> Path:
        if str(logrows) not in pins:
            raise HacaError(f"the circuit needs logrows {logrows}; genesis pins SRS files for {sorted(pins)} only")
        return pinned_srs(Path(srs_dir), logrows, pins[str(logrows)])

    work = client_home(home) / "circuits" / hashlib.sha256(file.read_bytes()).hexdigest()
    with console.status("building the zkml circuit (EZKL settings, calibration, compile, setup)…"):
        circuit = build_circuit(file, [[float(v) for v in rows[0]]], work, srs_for)
    ref = {}
    for field_name, path in (
        ("settings_hash", circuit.settings_path),
        ("vk_hash", circuit.vk_path),
        ("compiled_hash", circuit.compiled_path),
        ("pk_hash", circuit.pk_path),
    ):
        ref[field_name] = upload_file(hub_url, path, json_out, key).id
    settings, vk = circuit.settings_path.read_bytes(), circuit.vk_path.read_bytes()
    # declared as the circuit of FILE's bytes: a manifest may name it only for that model id
    client.send_msgs(key, (MsgRegisterCircuit(settings, vk, circuit.model_sha256),), wait=True)
    return ref


@contextmanager
def chain_client(config: ClientConfig) -> Iterator[ChainClient]:
    client = connect(config)
    try:
        yield client
    finally:
        client.close()


def registered_version(outcome: TxOutcome) -> int:
    for event in outcome.events:
        if event.get("type") == "register_model":
            for attr in event.get("attributes", []):
                if attr.get("key") == "version":
                    return int(attr["value"])
    raise HacaError(f"tx {outcome.hash} has no register_model event")


def register(
    name: str,
    file: Path,
    modes: str | None,
    price: int | None,
    from_: str,
    hub: str,
    home: Path | None,
    json_out: bool,
    new_version: bool,
    price_unit: str | None = None,
    max_rows: int | None = None,
    calibration: str | None = None,
    completion_price: int | None = None,
) -> None:
    """Shared by `create` (the name must be new) and `version` (it must exist and be ours). A GGUF
    file is an LLM: no schemas, priced per token (--price per prompt token, --completion-price per
    completion token), --max-rows is its context in tokens."""
    f.name(name, "--name")
    mode_list = parse_modes(modes) if modes is not None else None
    config = ClientConfig.load(client_home(home))
    hub_url = resolve_hub(hub, home, config)
    kind = file_kind(file)
    if kind == "gguf":
        input_schema: dict[str, Any] = {}
        output_schema: dict[str, Any] = {}
        price_unit = "token"
        max_rows = max_rows or (None if new_version else DEFAULT_CONTEXT)
    else:
        input_schema, output_schema = onnx_schemas(file)
    signer = keystore(home).get(from_ or config.default_key)
    with chain_client(config) as client:
        current = query_model(client, name)
        if new_version:
            if current is None:
                raise NotFound(f"no model {name!r}: register it first with 'haca model create'")
            if current.owner != signer.address:
                raise NotOwner(f"model {name!r} belongs to {current.owner}, not {signer.address}")
            mode_list = mode_list or current.modes
            price = current.price if price is None else price
            price_unit = price_unit or current.price_unit.value
            max_rows = max_rows or current.max_rows
            if completion_price is None and kind == "gguf":
                completion_price = current.completion_price
        elif current is not None:
            raise ModelExists(
                f"model {name!r} already exists (version {current.version}, owner {current.owner}): "
                "add a version with 'haca model version'"
            )
        if mode_list is None or price is None:
            raise ValueError("--modes and --price are required")

        def message(model_id: str) -> MsgRegisterModel:
            return MsgRegisterModel.from_json(
                {
                    "name": name,
                    "model_id": model_id,
                    "input_schema": input_schema,
                    "output_schema": output_schema,
                    "modes": list(mode_list),
                    "price": str(price),
                    "price_unit": price_unit or "request",
                    "max_rows": max_rows or DEFAULT_MAX_ROWS,
                    "circuit": circuit_ref,
                    "kind": kind,
                    "completion_price": str(
                        (price if completion_price is None else completion_price) if kind == "gguf" else 0
                    ),
                }
            )

        circuit_ref: dict[str, str] | None = None
        if "zkml" in mode_list:  # a placeholder ref, so every field is checked before the slow part
            circuit_ref = {k: PLACEHOLDER_ID for k in ("settings_hash", "vk_hash", "compiled_hash", "pk_hash")}
        message(PLACEHOLDER_ID)  # every field checked before the upload
        if circuit_ref is not None:
            circuit_ref = build_and_publish_circuit(
                client, config, home, hub_url, signer.key, file, calibration, json_out
            )
        blob = upload_file(hub_url, file, json_out, signer.key)
        outcome = client.send_msgs(signer.key, (message(blob.id),), wait=True)
        if not isinstance(outcome, TxOutcome):
            raise HacaError(f"tx {outcome} was not waited for")
        version = registered_version(outcome)
    answer = {
        "id": blob.id,
        "name": name,
        "version": version,
        "modes": list(mode_list),
        "price": price,
        "price_unit": price_unit or "request",
        "max_rows": max_rows or DEFAULT_MAX_ROWS,
        "kind": kind,
        "tx": outcome.hash,
    }
    if kind == "gguf":
        answer["completion_price"] = price if completion_price is None else completion_price
    emit(
        json_out,
        answer,
        lambda: console.print(
            f"registered [bold]{name}[/bold] version {version} ({blob.id}, {blob.size} bytes) "
            f"in block {outcome.height}: {outcome.hash}"
        ),
    )


# --- commands ---------------------------------------------------------------------------------


@model_app.command("upload")
@cli_command
def upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, metavar="FILE")],
    from_: UploaderOption = "",
    hub: HubOption = "",
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Upload FILE to the hub, signed by --from (an uploader of that hub); prints its content id."""
    hub_url = resolve_hub(hub, home)
    blob = upload_file(hub_url, file, json_out, upload_key(from_, home).key)
    emit(json_out, blob.to_json(), lambda: console.print(f"{blob.id} ({blob.size} bytes)"))


@model_app.command("create")
@cli_command
def create(
    name: Annotated[str, typer.Option("--name", help="model name: lower-case letters, digits, '-'")],
    file: FileOption,
    modes: Annotated[str, typer.Option("--modes", help="comma-separated modes: vanilla, zkml, tee")],
    price: Annotated[int, typer.Option("--price", min=0, help="minimum price per request or row, base units")],
    price_unit: PriceUnitOption = "request",
    max_rows: MaxRowsOption = None,
    completion_price: CompletionPriceOption = None,
    from_: FromOption = "",
    hub: HubOption = "",
    home: HomeOption = None,
    calibration: CalibrationOption = None,
    json_out: JsonOption = False,
) -> None:
    """Upload an ONNX model (schemas read from the graph) or a GGUF LLM (priced per token) and
    register NAME version 1 on chain. With zkml: build its EZKL circuit, put the artefacts in the
    hub and settings + vk on chain."""
    register(
        name, file, modes, price, from_, hub, home, json_out, False, price_unit, max_rows, calibration, completion_price
    )


@model_app.command("version")
@cli_command
def version(
    name: Annotated[str, typer.Option("--name", help="an existing model you own")],
    file: FileOption,
    modes: Annotated[
        str | None, typer.Option("--modes", help="comma-separated modes (default: the current version's)")
    ] = None,
    price: Annotated[
        int | None, typer.Option("--price", min=0, help="price per request or row (default: the current version's)")
    ] = None,
    price_unit: Annotated[
        str | None, typer.Option("--price-unit", help="request or row (default: the current version's)")
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", min=1, help="rows per request (default: the current version's)")
    ] = None,
    completion_price: CompletionPriceOption = None,
    from_: FromOption = "",
    hub: HubOption = "",
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Upload a new ONNX file for NAME and register it as the next version. Its terms (price,
    unit, rows, modes) take effect `price_delay` blocks later (a chain param), so nodes serving
    the current terms are never caught out, and receipts keep the terms they were served on."""
    register(name, file, modes, price, from_, hub, home, json_out, True, price_unit, max_rows, None, completion_price)


@model_app.command("list")
@cli_command
def list_models(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Every registered model at its latest version."""
    config = ClientConfig.load(client_home(home))
    with chain_client(config) as client:
        manifests = records.manifests(client)
    rows = [
        {k: v for k, v in manifest_json(m).items() if k in ("id", "name", "version", "modes", "price")}
        for m in manifests
    ]

    def table() -> None:
        t = Table("name", "version", "modes", "price", "id")
        for row in rows:
            t.add_row(row["name"], str(row["version"]), ",".join(row["modes"]), str(row["price"]), row["id"])
        console.print(t)

    emit(json_out, {"models": rows}, table)


@model_app.command("show")
@cli_command
def show(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """One model's manifest (the latest version unless @VERSION is given)."""
    name, at, version_text = ref.partition("@")
    f.name(name)
    if at and not (version_text.isdigit() and int(version_text) >= 1):
        raise ValueError(f"{ref!r}: expected NAME or NAME@VERSION with VERSION >= 1")
    config = ClientConfig.load(client_home(home))
    with chain_client(config) as client:
        manifest = query_model(client, ref)
    if manifest is None:
        raise NotFound(f"no model {name!r}" + (f" version {version_text}" if at else ""))
    shown = manifest_json(manifest)

    def human() -> None:
        console.print(f"[bold]{shown['name']}[/bold] version {shown['version']}  {shown['id']}")
        console.print(f"owner {shown['owner']}, modes {','.join(shown['modes'])}, price {shown['price']}")
        t = Table("", "tensor", "dtype", "shape")
        for kind in ("input", "output"):
            for tensor, spec in shown[f"{kind}_schema"].items():
                t.add_row(kind, escape(tensor), spec["dtype"], escape(str(spec["shape"])))
        console.print(t)

    emit(json_out, shown, human)
