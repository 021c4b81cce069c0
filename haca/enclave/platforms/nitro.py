"""AWS Nitro Enclaves evidence from the Nitro Security Module (``/dev/nsm``).

An attestation is one NSM request, CBOR ``{"Attestation": {"user_data": <binding>, "nonce": null,
"public_key": null}}``, sent through the NSM driver's one ioctl (magic 0x0A, number 0, read-write,
argument: two iovecs, request then response, as aws-nitro-enclaves-nsm-api's driver module sends
it); the driver shortens the response iovec to what the NSM wrote. The answer is CBOR
``{"Attestation": {"document": <COSE_Sign1>}}`` or ``{"Error": "<ErrorCode>"}``. The document is
the evidence as it is (the chain's Nitro verifier takes raw COSE bytes); Nitro has no endorsements.

The ioctl is behind `NsmTransport`, so the request and answer handling is tested with a double.

NEVER RUN ON HARDWARE: `IoctlTransport` (the ctypes message and the ioctl number) is written from
the NSM API sources and has not been run inside a Nitro enclave.
"""

from __future__ import annotations

import ctypes
import io
import os
from pathlib import Path
from typing import Any, Protocol

import cbor2

from haca.enclave.platforms.base import REPORT_DATA_SIZE, PlatformUnavailable
from haca.proofs.tee.attestation import Attestation

NSM_DEVICE = Path("/dev/nsm")
NSM_RESPONSE_MAX = 0x3000  # the NSM API's response buffer size


class NsmError(PlatformUnavailable):
    """The NSM refused the request, or answered with something that is not an attestation."""


class NsmTransport(Protocol):
    """Sends one CBOR request to the NSM and returns its CBOR answer."""

    def exchange(self, request: bytes) -> bytes: ...


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _NsmMessage(ctypes.Structure):
    _fields_ = [("request", _IoVec), ("response", _IoVec)]


def _iowr(kind: int, number: int, size: int) -> int:
    """Linux's _IOWR (the generic layout: x86, arm64)."""
    return (3 << 30) | (size << 16) | (kind << 8) | number


NSM_IOCTL = _iowr(0x0A, 0, ctypes.sizeof(_NsmMessage))


class IoctlTransport:
    """The NSM driver: one ioctl per request on the device."""

    def __init__(self, device: Path = NSM_DEVICE) -> None:
        self.device = device

    def exchange(self, request: bytes) -> bytes:
        import fcntl

        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
        message = _NsmMessage(
            _IoVec(ctypes.cast(req, ctypes.c_void_p), len(request)),
            _IoVec(ctypes.cast(resp, ctypes.c_void_p), NSM_RESPONSE_MAX),
        )
        fd = os.open(self.device, os.O_RDWR)
        try:
            fcntl.ioctl(fd, NSM_IOCTL, message, True)
        finally:
            os.close(fd)
        return resp.raw[: min(message.response.len, NSM_RESPONSE_MAX)]


def attestation_request(user_data: bytes) -> bytes:
    return cbor2.dumps({"Attestation": {"user_data": user_data, "nonce": None, "public_key": None}})


def document_from_response(response: bytes) -> bytes:
    """The attestation document in an NSM answer (one CBOR item; trailing buffer bytes ignored)."""
    try:
        answer: Any = cbor2.CBORDecoder(io.BytesIO(response)).decode()
    except (cbor2.CBORError, ValueError, EOFError) as exc:
        raise NsmError(f"the NSM's answer is not CBOR: {exc}") from exc
    if isinstance(answer, dict) and "Error" in answer:
        raise NsmError(f"the NSM refused the attestation request: {answer['Error']}")
    body = answer.get("Attestation") if isinstance(answer, dict) else None
    document = body.get("document") if isinstance(body, dict) else None
    if not isinstance(document, bytes) or not document:
        raise NsmError(f"the NSM's answer is not an attestation document: {str(answer)[:200]}")
    return document


class NitroPlatform:
    """Nitro attestation documents with the binding as ``user_data``."""

    name = "nitro"
    dev = False

    def __init__(self, device: Path = NSM_DEVICE, transport: NsmTransport | None = None) -> None:
        if transport is None:
            if not device.exists():
                raise PlatformUnavailable(f"no Nitro Security Module at {device} (not inside a Nitro enclave?)")
            transport = IoctlTransport(device)
        self.device, self.transport = device, transport

    def attest(self, report_data: bytes) -> Attestation:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data is {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
        try:
            response = self.transport.exchange(attestation_request(report_data))
        except OSError as exc:
            raise NsmError(f"the NSM request on {self.device} failed: {exc}") from exc
        return Attestation(format="nitro", evidence=document_from_response(response), endorsements=b"")
