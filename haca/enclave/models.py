"""The models an enclave runs, loaded by the enclave itself: the bytes come from a directory or the
hub, and are hashed inside the enclave before anything loads them. A model id is the SHA-256 of its
bytes (`sha256:<hex>`); bytes that hash to anything else are refused, whoever supplied them.

An ONNX model is loaded from the very bytes that were hashed (onnxruntime takes them from memory).
llama.cpp loads from a file, so a GGUF is first copied into a directory only the enclave writes,
and that private copy is what is hashed and loaded: the host cannot swap the file in between.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from haca.runtime.llm import DEFAULT_CONTEXT, LlmModel
from haca.runtime.onnx import OnnxModel

KINDS = ("onnx", "gguf")
ID_PREFIX = "sha256:"
CHUNK = 1 << 20


class ModelRefused(ValueError):
    """A model the enclave will not load (unknown, or bytes that are not its id)."""


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    kind: str  # "onnx" | "gguf"
    runtime: OnnxModel | LlmModel


def _hex(model_id: str) -> str:
    digest = model_id.removeprefix(ID_PREFIX)
    if not model_id.startswith(ID_PREFIX) or len(digest) != 64 or digest != digest.lower():
        raise ModelRefused(f"model id {model_id!r}: expected sha256:<64 lowercase hex>")
    bytes.fromhex(digest)
    return digest


def _check(model_id: str, digest: str, source: str) -> None:
    if digest != _hex(model_id):
        raise ModelRefused(f"the bytes from {source} hash to sha256:{digest}, not {model_id}: refused, not loaded")


class ModelStore:
    """Models by id. `directory` holds ``<hex>.<kind>`` files (the node's model cache, say);
    `hub` is a hub URL to fetch what the directory lacks. Loading is idempotent."""

    def __init__(self, directory: Path | None = None, hub: str = "", private_dir: Path | None = None) -> None:
        self.directory, self.hub = directory, hub
        self._private = Path(private_dir or tempfile.mkdtemp(prefix="haca-enclave-"))
        self._private.mkdir(parents=True, exist_ok=True)
        os.chmod(self._private, 0o700)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> LoadedModel:
        found = self._loaded.get(model_id)
        if found is None:
            raise ModelRefused(f"model {model_id} is not loaded in this enclave; load it first")
        return found

    @property
    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def load(self, model_id: str, kind: str, context: int = DEFAULT_CONTEXT, slots: int = 1) -> LoadedModel:
        if kind not in KINDS:
            raise ModelRefused(f"kind {kind!r}: expected one of {list(KINDS)}")
        digest = _hex(model_id)
        with self._lock:
            found = self._loaded.get(model_id)
            if found is not None:
                return found
            private = self._private / f"{digest}.{kind}"
            self._fetch(model_id, kind, private)
            if kind == "onnx":
                data = private.read_bytes()
                _check(model_id, hashlib.sha256(data).hexdigest(), str(private))
                runtime: OnnxModel | LlmModel = OnnxModel(data)
            else:
                _check(model_id, _file_digest(private), str(private))
                runtime = LlmModel(private, context=context, slots=slots)
            loaded = LoadedModel(model_id, kind, runtime)
            self._loaded[model_id] = loaded
            return loaded

    def _fetch(self, model_id: str, kind: str, private: Path) -> None:
        """Copy the model's bytes into the enclave's private directory (checked again after)."""
        if private.exists():
            return
        digest = _hex(model_id)
        source = self.directory / f"{digest}.{kind}" if self.directory is not None else None
        if source is not None and source.is_file():
            tmp = private.with_suffix(".part")
            shutil.copyfile(source, tmp)
            try:
                _check(model_id, _file_digest(tmp), str(source))
            except ModelRefused:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, private)
            return
        if not self.hub:
            where = f"{source}" if source is not None else "no model directory"
            raise ModelRefused(f"model {model_id}: not found ({where}) and no hub configured")
        from haca.hub.client import HubClient
        from haca.hub.errors import HubError

        with HubClient(self.hub) as hub:
            try:
                hub.download(model_id, private)  # refused unless the bytes hash to the id
            except HubError as exc:
                raise ModelRefused(f"model {model_id}: the hub did not give its bytes: {exc}") from exc

    def close(self) -> None:
        shutil.rmtree(self._private, ignore_errors=True)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
