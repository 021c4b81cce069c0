"""The dependency direction of DESIGN.md holds: crypto ← types ← proofs ← chain, node, client;
the chain never imports node, runtime, client or devnet code; node, client and the enclave
never import the chain (they reach it over RPC), nor does the explorer; the hub's server does not
build on the client SDK; the enclave imports nothing of the host node, the chain or the client (its
measurement covers what it imports, see haca.enclave.measure)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "haca"

# package -> the haca packages it must not import
FORBIDDEN = {
    "crypto": {"types", "proofs", "chain", "node", "client", "runtime", "hub", "cli", "devnet"},
    "types": {"proofs", "chain", "node", "client", "runtime", "hub", "cli", "devnet"},
    "proofs": {"chain", "node", "client", "runtime", "hub", "cli", "devnet"},
    "chain": {"node", "client", "runtime", "hub", "cli", "devnet"},
    "hub": {"chain", "node", "runtime", "cli", "devnet", "client"},
    # node and client reach the chain over RPC only
    "node": {"chain", "cli", "devnet"},
    "client": {"chain", "node", "runtime", "hub", "cli", "devnet", "enclave"},
    "enclave": {"chain", "node", "client", "cli", "devnet", "explorer"},
    # the explorer reads CometBFT RPC and the app's queries only (its page checks what it shows)
    "explorer": {"chain", "node", "runtime", "hub", "cli", "devnet", "enclave", "proofs"},
}


def haca_imports(path: Path) -> set[str]:
    """The haca packages a module imports (first component after `haca.`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "haca" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package: str) -> None:
    offending = {
        str(path.relative_to(PACKAGE.parent)): sorted(haca_imports(path) & FORBIDDEN[package])
        for path in sorted((PACKAGE / package).rglob("*.py"))
    }
    assert {k: v for k, v in offending.items() if v} == {}
