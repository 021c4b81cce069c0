"""The atheris harnesses in fuzz/, in short mode: each runs its seed corpus (made at start from the
real fixtures) and then a fixed number of mutated inputs, in a subprocess, and must exit 0: a parser
that raises anything but its documented error, or hangs, makes atheris exit non-zero and this fail.
Long mode is `make fuzz` (fuzz/README.md). Every harness must be listed in fuzz/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(FUZZ_DIR.glob("fuzz_*.py"))
RUNS = 2000  # mutated inputs after the seeds; a few seconds per harness
SEED = 1  # libFuzzer's random seed: the same inputs on every run


def test_there_are_harnesses() -> None:
    assert len(HARNESSES) >= 10, [h.name for h in HARNESSES]


def test_every_harness_is_listed_in_the_readme() -> None:
    readme = (FUZZ_DIR / "README.md").read_text()
    missing = [h.name for h in HARNESSES if f"`{h.name}`" not in readme]
    assert not missing, f"add these harnesses to fuzz/README.md's table: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("harness", HARNESSES, ids=[h.stem for h in HARNESSES])
def test_harness_runs_its_seeds_and_mutations_without_a_crash(harness: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    result = subprocess.run(
        [
            sys.executable,
            str(harness),
            str(corpus),
            f"-runs={RUNS}",
            f"-seed={SEED}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not crashes, (
        f"{harness.name} exited {result.returncode} {crashes}:\n{output[-4000:]}"
    )
    assert any(corpus.iterdir()), "the harness wrote no seed corpus"
    assert "Done" in output, output[-2000:]
