"""HACA: a network for verifiable AI inference.

Public client surface: `haca.Client`, `haca.AsyncClient`, `haca.InferenceResult`, `haca.ReceiptStatus`, `haca.HacaError`
(imported lazily so the chain's processes do not load HTTP client code).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "HacaError", "InferenceResult", "ReceiptStatus"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "InferenceResult", "ReceiptStatus"):
        from haca.client import sdk

        return getattr(sdk, name)
    if name == "HacaError":
        from haca.client.errors import HacaError

        return HacaError
    raise AttributeError(name)
