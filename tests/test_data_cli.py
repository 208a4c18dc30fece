"""`hpcllm data ...` commands through typer's runner (the sub-app the main CLI mounts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from hpcllm.cli.data import data_app
from hpcllm.data.store import TokenStore

runner = CliRunner()


def test_demo_writes_real_text_store(tmp_path: Path) -> None:
    out = tmp_path / "data" / "demo"
    res = runner.invoke(data_app, ["demo", "--output", str(out), "--no-debian-docs"])
    assert res.exit_code == 0, res.output
    store = TokenStore.open(out, tokenizer_fingerprint="byte-v1")
    assert store.n_tokens > 400_000  # the ~465 KB of pydoc_data.topics
    text = bytes(store.document(0)[:-1].astype("uint8")).decode()
    assert text.startswith('The "assert" statement') and "\n" in text  # real prose, not tokens
    first = json.loads((tmp_path / "data" / "demo.jsonl").read_text().splitlines()[0])["text"]
    assert first == text
    again = runner.invoke(data_app, ["demo", "--output", str(out), "--no-debian-docs"])
    assert again.exit_code == 0, again.output  # re-running the demo replaces its store


def test_prepare_info_and_train_tokenizer(tmp_path: Path) -> None:
    runner.invoke(data_app, ["demo", "--output", str(tmp_path / "demo"), "--no-debian-docs"])
    corpus = tmp_path / "demo.jsonl"
    res = runner.invoke(
        data_app, ["train-tokenizer", "--input", str(corpus), "--vocab-size", "400", "--output", str(tmp_path / "tok")]
    )
    assert res.exit_code == 0, res.output
    tok = tmp_path / "tok" / "tokenizer.json"
    assert tok.is_file()
    res = runner.invoke(
        data_app,
        [
            "prepare",
            "--input",
            str(corpus),
            "--tokenizer",
            str(tok),
            "--output",
            str(tmp_path / "bpe"),
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "MB/s" in res.output
    res = runner.invoke(data_app, ["info", str(tmp_path / "bpe"), "--seq-len", "128", "--verify"])
    assert res.exit_code == 0 and "samples @ seq_len 128" in res.output and "400" in res.output
    assert "verified" in res.output


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    res = runner.invoke(data_app, ["prepare", "--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "s")])
    assert res.exit_code == 2
    assert "error:" in res.output and "matches no" in res.output and "Traceback" not in res.output
    res = runner.invoke(data_app, ["info", str(tmp_path)])
    assert res.exit_code == 2 and "header.json is missing" in res.output


def test_importing_the_sub_app_does_not_import_torch() -> None:
    code = "import sys, hpcllm.cli.data; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_demo_adds_debian_python_docs_when_installed(tmp_path: Path, monkeypatch) -> None:
    from hpcllm.data import demo

    docs = tmp_path / "usr/share/doc/python3.11/html/_sources/library"
    docs.mkdir(parents=True)
    (docs / "json.rst.txt").write_text(":mod:`json` --- JSON encoder and decoder\n")
    monkeypatch.setattr(demo, "DEBIAN_DOC_SOURCES", tmp_path / "usr/share/doc/python3.11/html/_sources")
    _, with_docs = demo.write_demo(tmp_path / "with")
    _, without = demo.write_demo(tmp_path / "without", with_debian_docs=False)
    assert with_docs.header.n_docs == without.header.n_docs + 1
    last = TokenStore.open(tmp_path / "with").document(with_docs.header.n_docs - 1)
    assert bytes(last[:-1].astype("uint8")).decode().startswith(":mod:`json`")
