"""Token store: round trip, header checks on open, crash safety, dtype choice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hpcllm.data.store import HEADER, LOSS_MASK, TOKENS, StoreWriter, TokenStore, token_dtype
from hpcllm.data.tokenizer import ByteTokenizer
from hpcllm.errors import ConfigError

TEXTS = ["The quick brown fox.", "Jumps over the lazy dog!", "Ünïcödé too."]


def _write(path: Path, texts: list[str] = TEXTS, masks: bool = False, **kw) -> None:
    tok = ByteTokenizer()
    docs = [np.append(a, tok.eos_id) for a in tok.encode_batch(texts)]
    with StoreWriter(
        path,
        vocab_size=tok.vocab_size,
        eos_id=tok.eos_id,
        tokenizer="byte",
        tokenizer_fingerprint=tok.fingerprint,
        **kw,
    ) as w:
        w.add(docs, [np.arange(d.size, dtype=np.uint8) % 2 for d in docs] if masks else None)
        w.commit()


def test_round_trip_documents_and_offsets(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    store = TokenStore.open(tmp_path / "s", tokenizer_fingerprint="byte-v1")
    assert store.n_docs == 3 and store.tokens.dtype == np.uint16
    for i, text in enumerate(TEXTS):
        doc = store.document(i)
        assert doc[-1] == 256
        assert bytes(doc[:-1].astype(np.uint8)).decode() == text
    assert store.doc_offsets[-1] == store.n_tokens == sum(len(t.encode()) + 1 for t in TEXTS)
    assert store.loss_mask is None
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["doc_offsets.npy", "header.json", "tokens.bin"]
    # nothing but the store is left in the parent: the temp directory was renamed, not copied
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_windows_overlap_by_one_token(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    store = TokenStore.open(tmp_path / "s")
    toks, mask = store.windows(np.array([0, 1]), 8)
    assert toks.shape == (2, 9) and toks.dtype == np.int64 and mask is None
    assert toks[0, -1] == toks[1, 0]
    assert np.array_equal(toks.ravel()[:9], store.tokens[:9])
    assert store.n_windows(8) == (store.n_tokens - 1) // 8


def test_loss_mask_round_trip(tmp_path: Path) -> None:
    _write(tmp_path / "s", masks=True)
    store = TokenStore.open(tmp_path / "s")
    assert store.loss_mask is not None and store.header.has_loss_mask
    _, mask = store.windows(np.array([0]), 4)
    assert mask is not None and list(mask[0]) == [1, 0, 1, 0]  # labels are tokens 1..4


def test_mask_materialised_late_gives_ones_before(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    with StoreWriter(
        tmp_path / "s", vocab_size=257, eos_id=256, tokenizer="byte", tokenizer_fingerprint=tok.fingerprint
    ) as w:
        w.add([np.array([1, 2, 256])])
        w.add([np.array([3, 4, 256])], [np.array([0, 1, 1], np.uint8)])
        w.commit()
    assert list(TokenStore.open(tmp_path / "s").loss_mask) == [1, 1, 1, 0, 1, 1]


@pytest.mark.parametrize(
    "vocab,dtype", [(257, np.uint16), (65535, np.uint16), (65536, np.uint32), (200_000, np.uint32)]
)
def test_dtype_by_vocab(vocab: int, dtype: type) -> None:
    assert token_dtype(vocab) == dtype


def test_uint32_store(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s", vocab_size=100_000, eos_id=99_999, tokenizer="x", tokenizer_fingerprint="fp") as w:
        w.add([np.array([70_000, 5, 99_999])])
        w.commit()
    store = TokenStore.open(tmp_path / "s", tokenizer_fingerprint="fp")
    assert store.tokens.dtype == np.uint32 and list(store.document(0)) == [70_000, 5, 99_999]


def test_crash_leaves_no_store(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        StoreWriter(tmp_path / "s", vocab_size=257, eos_id=256, tokenizer="byte", tokenizer_fingerprint="byte-v1") as w,
    ):
        w.add([np.array([1, 2, 256])])
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_output_unless_overwrite(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        _write(tmp_path / "s", ["other"])
    _write(tmp_path / "s", ["other"], overwrite=True)
    assert TokenStore.open(tmp_path / "s").n_docs == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_overwrite_never_replaces_something_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="precious: exists and is not a token store"):
        _write(tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_open_rejects_other_tokenizer(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    with pytest.raises(ConfigError, match=r"s: written with tokenizer 'byte' .*fingerprint sha256:abc"):
        TokenStore.open(tmp_path / "s", tokenizer_fingerprint="sha256:abc")


def test_open_rejects_incomplete_store(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    (tmp_path / "s" / HEADER).unlink()
    with pytest.raises(ConfigError, match=r"header\.json is missing .*interrupted"):
        TokenStore.open(tmp_path / "s")


def test_open_rejects_truncated_tokens(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    tokens = tmp_path / "s" / TOKENS
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(ConfigError, match=r"tokens.bin: \d+ bytes, the header promises"):
        TokenStore.open(tmp_path / "s")


def test_open_rejects_missing_mask(tmp_path: Path) -> None:
    _write(tmp_path / "s", masks=True)
    (tmp_path / "s" / LOSS_MASK).unlink()
    with pytest.raises(ConfigError, match=re.escape("loss_mask.bin: missing")):
        TokenStore.open(tmp_path / "s")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("format_version", 99, "version 99; this hpcllm reads"),
        ("n_docs", 7, r"doc_offsets.npy: shape \(4,\)"),
        ("dtype", "float32", "dtype: 'float32'; allowed: uint16, uint32"),
        ("vocab_size", 70_000, "dtype uint16 does not fit vocab_size 70000"),
    ],
)
def test_open_checks_header_against_files(tmp_path: Path, key: str, value: object, match: str) -> None:
    _write(tmp_path / "s")
    file = tmp_path / "s" / HEADER
    header = json.loads(file.read_text())
    header[key] = value
    file.write_text(json.dumps(header))
    with pytest.raises(ConfigError, match=match):
        TokenStore.open(tmp_path / "s")


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no documents"):
        _write(tmp_path / "s", [])
    assert list(tmp_path.iterdir()) == []


def test_documents_may_span_writes_but_ends_are_checked(tmp_path: Path) -> None:
    with StoreWriter(
        tmp_path / "s", vocab_size=257, eos_id=256, tokenizer="byte", tokenizer_fingerprint="byte-v1"
    ) as w:
        w.write(np.array([1, 2]), None, np.array([], np.int64))  # a document's first piece
        w.write(np.array([3, 256, 4, 256]), None, np.array([2, 4]))  # its end, and a second one
        with pytest.raises(ValueError, match="document ends must increase"):
            w.write(np.array([5, 256]), None, np.array([3]))  # past the run
        with pytest.raises(ValueError, match="mask entries"):
            w.write(np.array([5, 256]), np.array([1], np.uint8), np.array([2]))
        w.commit()
    store = TokenStore.open(tmp_path / "s")
    assert store.doc_offsets.tolist() == [0, 4, 6]
    assert store.document(0).tolist() == [1, 2, 3, 256]


def test_commit_refuses_an_unfinished_document(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="2 tokens after the last document end"),
        StoreWriter(tmp_path / "s", vocab_size=257, eos_id=256, tokenizer="byte", tokenizer_fingerprint="byte-v1") as w,
    ):
        w.add([np.array([1, 256])])
        w.write(np.array([7, 8]), None, np.array([], np.int64))
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_verify_scans_what_open_does_not(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    store = TokenStore.open(tmp_path / "s")
    store.verify()  # a good store passes
    tokens = np.memmap(tmp_path / "s" / TOKENS, dtype=np.uint16, mode="r+")
    tokens[3] = 300
    tokens.flush()
    with pytest.raises(ConfigError, match=re.escape("tokens.bin: token 3 is 300, not below vocab_size 257")):
        TokenStore.open(tmp_path / "s").verify()
    tokens[3] = 65
    end_of_first = len(TEXTS[0].encode())
    tokens[end_of_first] = 65
    tokens.flush()
    with pytest.raises(ConfigError, match="document 0 does not end with EOS"):
        TokenStore.open(tmp_path / "s").verify(chunk=2)


# --- loss weights in [0, 1] ----------------------------------------------------------------------


def _weighted(path: Path, masks: list[np.ndarray | None]) -> TokenStore:
    """One 3-token document (2 bytes + EOS) per entry of ``masks`` (None: no weights given)."""
    with StoreWriter(path, vocab_size=257, eos_id=256, tokenizer="byte", tokenizer_fingerprint="byte-v1") as w:
        for m in masks:
            w.add([np.array([65, 66, 256])], None if m is None else [m])
        w.commit()
    return TokenStore.open(path)


def test_fractional_weights_widen_the_mask_to_float16(tmp_path: Path) -> None:
    # Plain doc (weight 1), a 0/1-masked doc, then fractional weights: everything written before
    # the first fraction is converted, so it keeps its value.
    store = _weighted(tmp_path / "s", [None, np.array([0, 1, 1], np.uint8), np.array([0.1, 0.5, 1.0])])
    assert store.header.loss_mask_dtype == "float16" and store.loss_mask.dtype == np.float16
    assert np.asarray(store.loss_mask).tolist() == [1, 1, 1, 0, 1, 1, np.float16(0.1), 0.5, 1]
    header = json.loads((tmp_path / "s" / HEADER).read_text())
    assert header["format_version"] == 2 and header["loss_mask_dtype"] == "float16"
    assert (tmp_path / "s" / LOSS_MASK).stat().st_size == 9 * 2
    _, mask = store.windows(np.array([1]), 3)  # labels are tokens 4..6
    assert mask.tolist() == [[1, 1, np.float16(0.1)]]
    store.verify()


def test_binary_masks_stay_uint8_and_version_1(tmp_path: Path) -> None:
    store = _weighted(tmp_path / "s", [np.array([0.0, 1.0, 1.0])])  # float input, 0/1 values
    assert store.header.loss_mask_dtype == "uint8" and store.loss_mask.dtype == np.uint8
    assert json.loads((tmp_path / "s" / HEADER).read_text())["format_version"] == 1


def test_version_1_header_without_mask_dtype_still_opens(tmp_path: Path) -> None:
    _write(tmp_path / "s", masks=True)
    file = tmp_path / "s" / HEADER
    header = json.loads(file.read_text())
    del header["loss_mask_dtype"]  # as written before loss weights existed
    file.write_text(json.dumps(header))
    store = TokenStore.open(tmp_path / "s")
    assert store.header.loss_mask_dtype == "uint8" and list(store.loss_mask[:4]) == [0, 1, 0, 1]


def test_weights_outside_0_1_are_refused_when_written_and_found_by_verify(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"loss weights must lie in \[0, 1\]"):
        _weighted(tmp_path / "bad", [np.array([0.5, 1.5, 1.0])])
    store = _weighted(tmp_path / "s", [np.array([0.5, 0.25, 1.0])])
    raw = np.memmap(tmp_path / "s" / LOSS_MASK, dtype=np.float16, mode="r+")
    raw[1] = np.float16("nan")
    raw.flush()
    with pytest.raises(ConfigError, match=r"loss_mask.bin: values other than weights in \[0, 1\] near token 0"):
        TokenStore.open(tmp_path / "s").verify()
    assert store.header.loss_mask_dtype == "float16"


def test_unknown_mask_dtype_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "s", masks=True)
    file = tmp_path / "s" / HEADER
    header = json.loads(file.read_text())
    header["loss_mask_dtype"] = "float64"
    file.write_text(json.dumps(header))
    with pytest.raises(ConfigError, match="loss_mask_dtype: 'float64'; allowed: uint8, float16"):
        TokenStore.open(tmp_path / "s")


@pytest.mark.timeout(60)  # np.load of a FIFO waits for a writer forever: fail instead of hanging
@pytest.mark.parametrize("name", [TOKENS, "doc_offsets.npy", LOSS_MASK])
@pytest.mark.parametrize("damage", ["fifo", "empty", "directory"])
def test_open_refuses_special_and_empty_files_in_one_line(tmp_path: Path, name: str, damage: str) -> None:
    """`data info` hung on a FIFO doc_offsets.npy and said a bare "Aborted." (EOFError) for an empty one."""
    import os

    _write(tmp_path / "s", masks=True)
    target = tmp_path / "s" / name
    target.unlink()
    if damage == "fifo":
        os.mkfifo(target)
    elif damage == "empty":
        target.touch()
    else:
        target.mkdir()
    with pytest.raises(ConfigError, match=re.escape(str(target))) as exc:
        TokenStore.open(tmp_path / "s")
    assert "\n" not in str(exc.value)
