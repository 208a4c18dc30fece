"""DCP's checkpoint index (``.metadata``) read without running code from the file.

DCP writes its index with ``pickle``, and its own reader unpickles it as it is: a crafted
``.metadata`` runs any code it names the moment ``hpcllm ckpt ls --verify``, ``ckpt export``,
``generate`` or a resume opens it. Here the index is read by an unpickler that builds only the
classes DCP's metadata holds (its dataclasses, torch's dtypes, layouts and ``Size``, a path) and
plain builtin containers; any other name in the file refuses the whole file with one line.
``SafeFileSystemReader`` is DCP's file reader with that unpickler: pass it to ``dcp.load`` as
``storage_reader`` so the load itself never unpickles the index the unsafe way.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from hpcllm.checkpoint_layout import DCP_METADATA, CheckpointCorrupt

# An index lists one entry per tensor chunk: a few MiB for a large model. Far above that is no index.
MAX_METADATA_BYTES = 512 * 2**20

_DCP_METADATA_CLASSES = frozenset(
    {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    }
)
# Names by module: DCP's own types, and builtins that only hold data (no eval, getattr, __import__ ...).
_ALLOWED: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": _DCP_METADATA_CLASSES,
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch": frozenset({"Size"}),
    "torch.serialization": frozenset({"_get_layout"}),  # a dict look-up of torch.layout by name
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "Path"}),
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "complex", "slice"}),
    # protocols 0/1 rebuild objects with _reconstructor(cls, base, state): cls and base pass through here too
    "copyreg": frozenset({"_reconstructor"}),
}


class MetadataRefused(CheckpointCorrupt):
    """The index names something DCP's metadata never holds: it is not unpickled."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only allow-listed classes; everything else stops the load before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            return getattr(torch, name)  # dtypes pickle as the module attribute (`torch.float32`)
        raise pickle.UnpicklingError(f"names {module}.{name}, which DCP's checkpoint index never holds")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("holds a persistent reference, which DCP's checkpoint index never holds")


def load_metadata_bytes(data: bytes, source: Path | str) -> Metadata:
    """The index in ``data``; MetadataRefused (one line naming ``source``) for anything else."""
    try:
        metadata = _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise MetadataRefused(f"{source}: refused, not read: {exc}") from None
    except Exception as exc:  # truncated or garbled: pickle raises many kinds
        raise CheckpointCorrupt(f"{source}: cannot read DCP metadata: {type(exc).__name__}: {exc}") from None
    if not isinstance(metadata, Metadata):
        raise MetadataRefused(f"{source}: refused: holds a {type(metadata).__name__}, not DCP's Metadata")
    return metadata


def read_metadata(ckpt_dir: os.PathLike[str] | str) -> Metadata:
    """The ``.metadata`` of a checkpoint folder, read safely (see the module docstring).

    A FIFO or device in its place is refused before it is opened (opening a FIFO would block).
    """
    path = Path(ckpt_dir) / DCP_METADATA
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointCorrupt(f"{path}: cannot read DCP metadata: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointCorrupt(f"{path}: not a regular file")
    if st.st_size > MAX_METADATA_BYTES:
        raise CheckpointCorrupt(f"{path}: {st.st_size} bytes, more than a checkpoint index holds")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise CheckpointCorrupt(f"{path}: cannot read DCP metadata: {exc.strerror}") from None
    return load_metadata_bytes(data, path)


class SafeFileSystemReader(FileSystemReader):
    """DCP's reader of a checkpoint folder, with ``read_metadata`` through the restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(os.fspath(self.path))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # as DCP's own reader does
        return metadata
