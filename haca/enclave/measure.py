"""The DEV measurement: one hash over the code that computes an answer inside the enclave.

It covers (1) the Python source of every `haca` module the enclave process can import — the
closure of `haca` imports from its entry module, found statically in the sources (function-level
imports included), so the value does not depend on what happened to be imported first — and
(2) the bytes of the native runtimes it loads: onnxruntime's and llama.cpp's shared libraries.
Each file is named by its path inside its package (`haca/enclave/runtime.py`,
`onnxruntime/capi/libonnxruntime.so…`), never by where it is installed, so the same tree and the
same wheels give the same measurement on any machine. On real hardware the platform measures the
image (Nitro PCRs, TDX RTMRs, the SNP launch digest); this is what the DEV platform reports instead.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from haca.proofs.tee.dev import measure_sources

ENTRY_MODULE = "haca.enclave.main"
HACA_ROOT = Path(__file__).resolve().parents[1]  # the haca package directory
# Native runtimes the enclave loads, by the package that ships them (absent packages measure as absent).
RUNTIME_PACKAGES = ("onnxruntime", "llama_cpp")
LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")


def _module_file(name: str) -> Path | None:
    """The source file of haca module `name` (a package's __init__.py), or None if there is none."""
    parts = name.split(".")[1:]
    base = HACA_ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(name: str, path: Path) -> set[str]:
    """The haca modules `path` imports (a `from pkg import name` counts name when it is a module)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_bytes(), str(path))
    # A module's PEP 562 `__getattr__` runs only when someone asks the module for that name (haca's
    # own lazily exported client SDK): what it would import is not what importing the module runs.
    lazy = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("haca"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "haca" or module.startswith("haca."):
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_closure(entry: str = ENTRY_MODULE) -> dict[str, Path]:
    """Every haca module reachable from `entry` by imports, with its parent packages: name -> file."""
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue  # `from haca.x import function`: the name is not a module
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a module runs its parents
        todo.extend(_imports(name, path))
    return seen


def runtime_libraries() -> dict[str, Path]:
    """The shared libraries of the native runtimes, named by their path inside the package."""
    found: dict[str, Path] = {}
    for package in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            root = Path(location)
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink() and any(s in path.name for s in LIBRARY_SUFFIXES):
                    found[f"{package}/{path.relative_to(root).as_posix()}"] = path
    return found


def measured_files(entry: str = ENTRY_MODULE) -> dict[str, Path]:
    """What the measurement covers: `haca/…` sources and `<package>/…` libraries."""
    sources = {f"haca/{path.relative_to(HACA_ROOT).as_posix()}": path for path in import_closure(entry).values()}
    return {**sources, **runtime_libraries()}


@functools.cache
def enclave_measurement(entry: str = ENTRY_MODULE) -> bytes:
    """The 32-byte DEV measurement of the enclave (see the module doc); computed once per process."""
    return measure_sources({name: path.read_bytes() for name, path in measured_files(entry).items()})
