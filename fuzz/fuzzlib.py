"""What every harness shares: the fixture files its seeds come from, and `main`, which writes the
seed corpus and starts atheris.

Seeds are made at start from the real fixtures (tests/fixtures/tee/, …), so nothing binary is
committed: `main` writes them into the first corpus directory on the command line, or into
fuzz/corpus/<target>/ when none is given (git ignores it), and libFuzzer reads them from there
before it mutates anything. Each seed is named by its sha256, so a restart writes nothing new.

Defaults added unless given: `-max_len` (the largest seed, at least 4096), `-timeout=10` (an input
that runs longer is a hang: a crash) and `-rss_limit_mb=2048`.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import atheris
from cryptography.hazmat.primitives.asymmetric import ec

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
TEE_FIXTURES = ROOT / "tests" / "fixtures" / "tee"
CORPUS_DIR = FUZZ_DIR / "corpus"
DEFAULT_TIMEOUT_S = 10
DEFAULT_RSS_MB = 2048


@contextlib.contextmanager
def patched(module: ModuleType, **names: Any) -> Iterator[None]:
    """`module`'s globals `names` replaced while the block runs (a verifier's crypto steps stubbed)."""
    saved = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


class AcceptingKey(ec.EllipticCurvePublicKey):
    """An EC public key whose `verify` accepts any signature: stubbed crypto, so that mutated
    evidence reaches the parsing a verifier does after its signature check. Never outside fuzz/."""

    def __init__(self, curve: ec.EllipticCurve) -> None:
        self._curve = curve

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._curve

    @property
    def key_size(self) -> int:
        return self._curve.key_size

    def public_numbers(self) -> ec.EllipticCurvePublicNumbers:
        raise NotImplementedError

    def public_bytes(self, encoding: Any, format: Any) -> bytes:
        raise NotImplementedError

    def verify(self, signature: Any, data: Any, signature_algorithm: Any) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __copy__(self) -> AcceptingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> AcceptingKey:
        return self


def fixture(relative: str) -> bytes:
    """A TEE fixture file's bytes (tests/fixtures/tee/<relative>)."""
    return (TEE_FIXTURES / relative).read_bytes()


def write_seeds(directory: Path, seeds: Iterable[bytes]) -> list[bytes]:
    """Write each seed into `directory` as seed-<sha256 prefix> (kept if already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in seeds:
        path = directory / f"seed-{hashlib.sha256(seed).hexdigest()[:16]}"
        if not path.exists():
            path.write_bytes(seed)
        written.append(seed)
    return written


def _has_flag(argv: list[str], name: str) -> bool:
    return any(arg.startswith(f"-{name}=") for arg in argv)


def fuzz_argv(argv: list[str], target: str, seeds: Iterable[bytes]) -> list[str]:
    """`argv` with the seed corpus written and its directory named, and the defaults added."""
    out = list(argv)
    positional = [arg for arg in out[1:] if not arg.startswith("-")]
    if not positional:  # no corpus named: the target's own directory under fuzz/corpus
        corpus = CORPUS_DIR / target
        out.append(str(corpus))
    elif Path(positional[0]).is_dir() or not Path(positional[0]).exists():
        corpus = Path(positional[0])  # the first corpus directory is the one libFuzzer writes to
    else:
        corpus = None  # a file: an input (e.g. a crash) to run once, no corpus
    sizes = [len(s) for s in write_seeds(corpus, seeds)] if corpus is not None else []
    if not _has_flag(out, "max_len"):
        out.insert(1, f"-max_len={max([4096, *sizes])}")
    if not _has_flag(out, "timeout"):
        out.insert(1, f"-timeout={DEFAULT_TIMEOUT_S}")
    if not _has_flag(out, "rss_limit_mb"):
        out.insert(1, f"-rss_limit_mb={DEFAULT_RSS_MB}")
    return out


def main(target: str, test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    """Seed the corpus, check every seed passes `test_one_input`, and fuzz."""
    seed_list = list(seeds())
    for seed in seed_list:  # a seed that fails is a broken harness, not a finding: say so at once
        test_one_input(seed)
    atheris.Setup(fuzz_argv(sys.argv, target, seed_list), test_one_input)
    atheris.Fuzz()
