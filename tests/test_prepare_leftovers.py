"""A `data prepare` killed with SIGKILL leaves its temp folder; the next prepare of that output removes
it, never the temp folder of a prepare that is still writing (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcllm.data import staging
from hpcllm.data.demo import topics
from hpcllm.data.store import TokenStore

DOCS = list(topics().values())[:4]  # real text: Python's reference documentation

# `hpcllm data prepare` whose writer kills its own process (SIGKILL: no handler, no cleanup) once
# two documents are in the temp folder.
KILLED_PREPARE = """
import os, signal, sys
from hpcllm.data.store import StoreWriter
write = StoreWriter.write
def write_then_die(self, *args, **kwargs):
    write(self, *args, **kwargs)
    if self.n_docs >= 2:
        os.kill(os.getpid(), signal.SIGKILL)
StoreWriter.write = write_then_die
from hpcllm.cli import main
sys.argv = ["hpcllm", *sys.argv[1:]]
main()
"""


def _prepare(code: str | None, inputs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cli = ["-c", code] if code else ["-c", "from hpcllm.cli import main; main()"]
    args = ["data", "prepare", "-i", str(inputs), "-o", str(out), "--workers", "1"]
    return subprocess.run([sys.executable, *cli, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_a_rerun_removes_the_temp_folder_of_a_killed_prepare(tmp_path: Path) -> None:
    inputs = tmp_path / "corpus"
    inputs.mkdir()
    for i, text in enumerate(DOCS):
        (inputs / f"{i}.txt").write_text(text)  # a .txt file is one document
    out = tmp_path / "store"
    killed = _prepare(KILLED_PREPARE, inputs, out)
    assert killed.returncode == -9, killed.stderr
    (left,) = staging.temp_folders(out)
    assert (left / staging.LOCK).exists() and not out.exists()

    rerun = _prepare(None, inputs, out)
    assert rerun.returncode == 0, rerun.stderr
    assert f"removed 1 temp folder(s) left by a killed build of {out}: {left.name}" in " ".join(rerun.stderr.split())
    assert staging.temp_folders(out) == [] and not left.exists()
    store = TokenStore.open(out)
    store.verify()
    assert store.n_docs == len(DOCS) and sorted(p.name for p in out.iterdir()) == [
        "doc_offsets.npy",
        "header.json",
        "tokens.bin",
    ]  # and no lock file in the store


def test_a_temp_folder_whose_writer_lives_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "store"
    # Another process writing a store: holds its temp folder's lock until its stdin closes.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from hpcllm.data.staging import Claim\n"
            f"claim = Claim.new(Path({str(out)!r})); print(claim.folder, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    live = Path(holder.stdout.readline().strip())
    unlocked = tmp_path / ".store.abcd1234.tmp"  # between mkdtemp and its lock: no lock file yet
    unlocked.mkdir()
    other = tmp_path / ".store.v2.abcd1234.tmp"  # another store's ("store.v2"), dead
    other.mkdir()
    (other / staging.LOCK).touch()
    try:
        assert staging.remove_abandoned(out) == []
        assert live.is_dir() and unlocked.is_dir() and other.is_dir()
    finally:
        holder.communicate("")
    assert staging.remove_abandoned(out) == [live.name]  # its writer is gone: the lock is free
    assert not live.exists() and unlocked.is_dir() and other.is_dir()
    assert staging.temp_folders(out) == [unlocked]
