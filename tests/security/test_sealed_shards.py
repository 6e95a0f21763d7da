"""Sharded (FSDP) checkpoints in an encrypted run: DCP's files go through the storage module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from privet.crypto import Cipher, is_encrypted
from privet.errors import CheckpointError
from privet.storage import protect
from privet.train.checkpoint import dcp_load_safely
from privet.train.sealed_dcp import sealed_writer

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _save(folder: Path, key: bytes) -> dict[str, torch.Tensor]:
    protect(folder, Cipher(key))
    torch.manual_seed(0)
    weights = torch.nn.Linear(6, 3).state_dict()
    dcp.save({"model": weights, "extra": {"step": 7}}, storage_writer=sealed_writer(folder / "sharded"))
    return weights


def _load(folder: Path) -> dict:
    state = {"model": torch.nn.Linear(6, 3).state_dict(), "extra": {"step": 0}}
    dcp_load_safely(state, str(folder / "sharded"))
    return state


def test_every_dcp_file_is_sealed_owner_only_and_loads_back(tmp_path):
    weights = _save(tmp_path, os.urandom(32))
    files = list((tmp_path / "sharded").iterdir())
    assert {p.name for p in files} >= {".metadata"} and len(files) >= 2
    for path in files:
        data = path.read_bytes()
        assert is_encrypted(data) and b"weight" not in data
        assert path.stat().st_mode & 0o077 == 0
    state = _load(tmp_path)
    assert state["extra"] == {"step": 7}
    for name, tensor in weights.items():
        assert torch.equal(state["model"][name], tensor)


@pytest.mark.parametrize("victim", [".metadata", "shard"])
def test_a_flipped_byte_in_a_sealed_shard_fails_authentication_naming_the_file(tmp_path, victim):
    _save(tmp_path, os.urandom(32))
    path = next(p for p in (tmp_path / "sharded").iterdir()
                if (p.name == ".metadata") == (victim == ".metadata"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path)
    assert path.name in str(info.value) and "authentication failed" in str(info.value)


def test_another_key_cannot_read_the_shards(tmp_path):
    _save(tmp_path, os.urandom(32))
    protect(tmp_path, Cipher(os.urandom(32)))
    with pytest.raises(CheckpointError, match="authentication failed"):
        _load(tmp_path)
