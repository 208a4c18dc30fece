"""prepare: inputs (.txt/.jsonl/.gz, globs), worker pool, streaming pieces, masks, BPE, errors."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from hpcllm.data import sources
from hpcllm.data.bpe import train_bpe
from hpcllm.data.demo import topics
from hpcllm.data.prepare import prepare
from hpcllm.data.store import TokenStore
from hpcllm.data.tokenizer import EOS_TOKEN, fingerprint_of, load_tokenizer
from hpcllm.errors import ConfigError

DOCS = list(topics().values())[:12]  # real text: Python's reference documentation


def _decode(store: TokenStore, i: int) -> str:
    doc = store.document(i)
    assert doc[-1] == store.header.eos_id
    return bytes(doc[:-1].astype(np.uint8)).decode("utf-8")


def _jsonl(path: Path, records: list[dict], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_jsonl_txt_and_gz_in_input_order(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"text": t} for t in DOCS[:4]])
    _jsonl(tmp_path / "b.jsonl.gz", [{"text": t} for t in DOCS[4:8]], gz=True)
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(DOCS[8:]):
        if i % 2:
            (tmp_path / "txt" / f"{i}.txt.gz").write_bytes(gzip.compress(t.encode()))
        else:
            (tmp_path / "txt" / f"{i}.txt").write_text(t)
    res = prepare(
        [str(tmp_path / "a.jsonl"), str(tmp_path / "*.gz"), str(tmp_path / "txt")], "byte", tmp_path / "out", workers=1
    )
    store = TokenStore.open(res.output, tokenizer_fingerprint="byte-v1")
    assert store.n_docs == len(DOCS) and res.header.n_docs == len(DOCS)
    assert [_decode(store, i) for i in range(store.n_docs)] == DOCS
    assert store.n_tokens == sum(len(d.encode()) + 1 for d in DOCS)


def test_worker_pool_writes_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)  # many tasks, so the pool has work to reorder
    _jsonl(tmp_path / "a.jsonl", [{"text": t} for t in DOCS])
    one = prepare([str(tmp_path / "a.jsonl")], "byte", tmp_path / "one", workers=1)
    two = prepare([str(tmp_path / "a.jsonl")], "byte", tmp_path / "two", workers=2)
    assert one.header == two.header
    for name in ("tokens.bin", "doc_offsets.npy"):
        assert (one.output / name).read_bytes() == (two.output / name).read_bytes()


def test_large_txt_streams_in_pieces_without_changing_the_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", 1000)
    text = "".join(DOCS[:3]) + "ünïcödé without a final newline " * 40
    (tmp_path / "big.txt").write_text(text)
    pieces = list(sources.iter_pieces(tmp_path / "big.txt"))
    assert len(pieces) > 10 and sum(p.ends_doc for p in pieces) == 1
    for p in pieces:
        p.data.decode("utf-8")  # never cuts a character in half
    store = TokenStore.open(prepare([str(tmp_path / "big.txt")], "byte", tmp_path / "s", workers=2).output)
    assert store.n_docs == 1 and _decode(store, 0) == text


def test_instruction_pairs_mask_the_prompt(tmp_path: Path) -> None:
    recs = [
        {"text": "plain doc"},
        {"prompt": "Q: 2+2?\nA: ", "response": "4"},
        {"prompt": "Say hi. ", "response": "hi"},
    ]
    _jsonl(tmp_path / "i.jsonl", recs)
    store = TokenStore.open(prepare([str(tmp_path / "i.jsonl")], "byte", tmp_path / "s", workers=1).output)
    assert store.header.has_loss_mask and store.loss_mask is not None
    mask = np.asarray(store.loss_mask)
    expected = (
        [1] * len("plain doc") + [1] + [0] * len("Q: 2+2?\nA: ") + [1] + [1] + [0] * len("Say hi. ") + [1, 1] + [1]
    )
    assert mask.tolist() == expected
    assert _decode(store, 1) == "Q: 2+2?\nA: 4"


def test_loss_weights_from_records_and_the_prompt_weight_option(tmp_path: Path) -> None:
    recs = [
        {"text": "ab"},  # weight 1
        {"text": "cd", "weight": 0.25},  # a down-weighted document
        {"prompt": "Q", "response": "A"},  # prompt: --prompt-weight
        {"prompt": "Q", "response": "A", "prompt_weight": 0.5, "response_weight": 0.75},
        {
            "segments": [
                {"text": "u1", "weight": 0},
                {"text": "a1"},
                {"text": "u2", "weight": 0.1},
                {"text": "a2", "weight": 0.9},
            ]
        },
    ]  # multi-turn; EOS: last weight
    _jsonl(tmp_path / "w.jsonl", recs)
    res = prepare(
        [str(tmp_path / "w.jsonl")], "byte", tmp_path / "s", workers=1, fields=sources.Fields(prompt_weight=0.1)
    )
    store = TokenStore.open(res.output)
    assert store.header.loss_mask_dtype == "float16"
    expected = [1, 1, 1] + [0.25] * 3 + [0.1, 1, 1] + [0.5, 0.75, 0.75] + [0, 0, 1, 1, 0.1, 0.1, 0.9, 0.9, 0.9]
    assert np.asarray(store.loss_mask).tolist() == np.asarray(expected, np.float16).tolist()
    assert _decode(store, 4) == "u1a1u2a2"
    # Without fractional weights the same pairs give the plain 0/1 mask (prompt weight 0).
    _jsonl(tmp_path / "p.jsonl", recs[2:3])
    plain = TokenStore.open(prepare([str(tmp_path / "p.jsonl")], "byte", tmp_path / "p", workers=1).output)
    assert plain.header.loss_mask_dtype == "uint8" and list(plain.loss_mask) == [0, 1, 1]


@pytest.mark.parametrize(
    "record,match",
    [
        ({"text": "x", "weight": 1.5}, r"w.jsonl:1: 'weight' must be a loss weight in \[0, 1\], got 1.5"),
        ({"prompt": "q", "response": "a", "prompt_weight": "high"}, r"'prompt_weight' must be a loss weight"),
        ({"segments": [{"text": "x", "weight": -0.1}]}, r"'weight' must be a loss weight in \[0, 1\], got -0.1"),
        ({"segments": "x"}, r"'segments' must be a list of"),
        ({"segments": [{"weight": 1}]}, r"'text' must be a string, got None"),
    ],
    ids=["weight>1", "prompt_weight-string", "negative-segment", "segments-not-list", "segment-without-text"],
)
def test_bad_weights_name_file_line_and_range(tmp_path: Path, record: dict, match: str) -> None:
    _jsonl(tmp_path / "w.jsonl", [record])
    with pytest.raises(ConfigError, match=match):
        prepare([str(tmp_path / "w.jsonl")], "byte", tmp_path / "s", workers=1)


def test_custom_field_names(tmp_path: Path) -> None:
    _jsonl(tmp_path / "c.jsonl", [{"body": DOCS[0]}])
    res = prepare([str(tmp_path / "c.jsonl")], "byte", tmp_path / "s", workers=1, fields=sources.Fields(text="body"))
    assert _decode(TokenStore.open(res.output), 0) == DOCS[0]


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"text": "ok"}\n{"text": broken}\n', r"c.jsonl:2: invalid JSON"),
        ('{"body": "x"}\n', r"c.jsonl:1: no 'text' key .*keys: body.*--text-key"),
        ("[1, 2]\n", "expected a JSON object, got list"),
        ('{"text": 5}\n', "'text' must be a string"),
    ],
)
def test_bad_records_name_file_and_line(
    tmp_path: Path, content: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", 8)  # several tasks: workers=2 really uses the pool
    (tmp_path / "c.jsonl").write_text(content)
    for workers in (1, 2):
        with pytest.raises(ConfigError, match=match):
            prepare([str(tmp_path / "c.jsonl")], "byte", tmp_path / "s", workers=workers)
        assert not (tmp_path / "s").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]  # no temp directory left


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--input: '.*nothing\*.txt' matches no"):
        prepare([str(tmp_path / "nothing*.txt")], "byte", tmp_path / "s")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ConfigError, match=r"x.csv: unknown file type; allowed: .txt, .jsonl"):
        prepare([str(tmp_path / "x.csv")], "byte", tmp_path / "s")
    with pytest.raises(ConfigError, match=re.escape("neither 'byte' nor an existing tokenizer.json")):
        prepare([str(_jsonl(tmp_path / "ok.jsonl", [{"text": "hi"}]))], "gpt2", tmp_path / "s")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bpe")
    _jsonl(root / "corpus.jsonl", [{"text": t} for t in topics().values()])
    return train_bpe([str(root / "corpus.jsonl")], 512, root)


def test_bpe_trains_offline_and_round_trips(bpe: Path, tmp_path: Path) -> None:
    assert bpe.name == "tokenizer.json"
    tok = load_tokenizer(str(bpe))
    assert tok.vocab_size == 512 and tok.eos_id == 0  # EOS is the first special token
    ids = tok.encode_batch([DOCS[0]])[0]
    assert len(ids) < len(DOCS[0].encode()) / 2  # merges compress English well below 1 byte/token
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(bpe)).decode(ids.tolist()) == DOCS[0]
    _jsonl(tmp_path / "d.jsonl", [{"text": t} for t in DOCS])
    res = prepare([str(tmp_path / "d.jsonl")], str(bpe), tmp_path / "s", workers=2)
    store = TokenStore.open(res.output, tokenizer_fingerprint=fingerprint_of(str(bpe)))
    assert store.header.vocab_size == 512 and store.n_docs == len(DOCS)
    assert Tokenizer.from_file(str(bpe)).decode(store.document(3)[:-1].tolist()) == DOCS[3]
    with pytest.raises(ConfigError, match="written with tokenizer"):
        TokenStore.open(res.output, tokenizer_fingerprint=fingerprint_of("byte"))


def test_fingerprint_ignores_formatting(bpe: Path, tmp_path: Path) -> None:
    compact = tmp_path / "tokenizer.json"
    compact.write_text(json.dumps(json.loads(bpe.read_text())))
    assert fingerprint_of(str(compact)) == fingerprint_of(str(bpe)) != fingerprint_of("byte")


def test_tokenizer_without_eos_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(DOCS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match=f"has no {EOS_TOKEN!r} token"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


def test_vocab_too_small_for_bpe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--vocab-size: 100; a byte-level BPE needs at least 257"):
        train_bpe(["x"], 100, tmp_path)


def test_progress_reports_every_input_byte_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", 2048)
    _jsonl(tmp_path / "a.jsonl.gz", [{"text": t} for t in DOCS] * 100, gz=True)
    (tmp_path / "b.txt").write_text("".join(DOCS))
    seen: list[int] = []
    totals: list[int] = []
    prepare(
        [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.txt")],
        "byte",
        tmp_path / "s",
        workers=1,
        progress=seen.append,
        on_start=totals.append,
    )
    size = (tmp_path / "a.jsonl.gz").stat().st_size + (tmp_path / "b.txt").stat().st_size
    assert totals == [size] and sum(seen) == size and len(seen) > 3


def test_tokenizers_decode_what_they_encode_without_eos(bpe: Path) -> None:
    """What `hpcllm generate` prints: the text of the ids, EOS and other special tokens left out."""
    for tok in (load_tokenizer("byte"), load_tokenizer(str(bpe))):
        ids = tok.encode_batch([DOCS[1]])[0].tolist()
        assert tok.decode([*ids, tok.eos_id]) == DOCS[1], tok.name
    # A byte tokenizer's multi-byte character split over tokens decodes once whole.
    assert load_tokenizer("byte").decode(list("é".encode())) == "é"
