"""Attacks through data files: a symlink in a data folder, a path leaving the dataset root,
a number that overflows float32.

Data files are not trusted (docs/security.md): a folder a colleague hands over may hold a
symlink to ``~/.ssh/id_rsa`` or to another team's data. A source reads only what is inside
the folder it was given; the escaping file becomes an ``outside_root`` bad record naming
it, its content never reaches a record (nor the cache fingerprint, which hashes files),
and ``follow_symlinks: true`` is the explicit way to read it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

import privet

SECRET = "SECRET-MARKER-7f3a"


def _secret_file(tmp_path: Path, name: str, content: bytes) -> Path:
    """The file the attacker wants read: outside every data folder."""
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return target


def _read(source) -> list:
    return [item for shard in source.shards() for item in source.read(shard)]


def _leaks(items: list, needle: bytes) -> bool:
    return any(needle in repr(item).encode() or (isinstance(item, dict) and any(
        isinstance(v, bytes) and needle in v for v in item.values())) for item in items)


def _host(privet_host, plugin: str):
    privet_host.register_plugin(importlib.import_module(f"privet_{plugin}.plugin"), plugin)
    return privet_host


def _folder_with_link(tmp_path: Path, rel_link: str, good: dict[str, bytes], target: Path) -> Path:
    root = tmp_path / "data"
    for rel, content in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    (root / rel_link).parent.mkdir(parents=True, exist_ok=True)
    (root / rel_link).symlink_to(target)
    return root


CASES = {
    # source name -> (plugin, folder option, good files, the link, what the secret file holds)
    "jsonl": (None, "paths", {"a.jsonl": b'{"text": "fine"}\n'}, "b.jsonl",
              b'{"text": "%s"}\n'),
    "text.jsonl": ("text", "paths", {"a.jsonl": b'{"text": "fine", "label": "x"}\n'}, "b.jsonl",
                   b'{"text": "%s", "label": "x"}\n'),
    "text.files": ("text", "path", {"pos/a.txt": b"fine"}, "pos/b.txt", b"%s"),
    "image.folder": ("image", "root", {"cat/a.png": b"\x89PNG fine"}, "cat/b.png", b"\x89PNG %s"),
    "timeseries.csv": ("timeseries", "paths", {"a.csv": b"timestamp,value\n0,1\n"}, "b.csv",
                       b"timestamp,value\n0,1\n1,%s\n"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_symlink_out_of_the_data_folder_is_reported_and_never_read(privet_host, tmp_path, name):
    plugin, key, good, link, payload = CASES[name]
    host = _host(privet_host, plugin) if plugin else privet_host
    secret = _secret_file(tmp_path, Path(link).name,
                          payload % (b"1" if name == "timeseries.csv" else SECRET.encode()))
    root = _folder_with_link(tmp_path, link, good, secret)
    folder = [str(root)] if key == "paths" else str(root)
    extra = {"target_columns": ["value"]} if name == "timeseries.csv" else {}

    source = host.make("source", name, {key: folder, **extra})
    items = _read(source)

    refused = [i for i in items if isinstance(i, privet.BadRecord) and i.reason == "outside_root"]
    assert len(refused) == 1 and Path(link).name in refused[0].location
    assert "follow_symlinks: true" in refused[0].detail
    assert not _leaks(items, SECRET.encode())
    assert all(Path(f).resolve() != secret for f in source.files()), "not hashed for the cache"
    assert len([i for i in items if isinstance(i, dict)]) >= 1, "the real data is still read"

    followed = _read(host.make("source", name, {key: folder, "follow_symlinks": True, **extra}))
    assert not any(isinstance(i, privet.BadRecord) and i.reason == "outside_root" for i in followed)
    assert len([i for i in followed if isinstance(i, dict)]) > len(
        [i for i in items if isinstance(i, dict)]), "with follow_symlinks the link is read"


@pytest.mark.parametrize("path", ["../elsewhere/secret.png", "ABSOLUTE", "link.png"])
def test_an_image_manifest_cannot_name_a_file_outside_its_root(privet_host, tmp_path, path):
    host = _host(privet_host, "image")
    secret = _secret_file(tmp_path, "secret.png", b"\x89PNG " + SECRET.encode())
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.png").write_bytes(b"\x89PNG fine")
    (root / "link.png").symlink_to(secret)
    path = str(secret) if path == "ABSOLUTE" else path
    manifest = root / "manifest.csv"
    manifest.write_text(f"path,label\nok.png,cat\n{path},dog\n")

    source = host.make("source", "image.manifest", {"path": str(manifest)})
    items = _read(source)

    assert items[0]["path"] == "ok.png"
    assert (items[1].reason, items[1].location) == ("outside_root", "manifest.csv:3")
    assert not _leaks(items, SECRET.encode())
    assert all(Path(f).resolve() != secret for f in source.files())


def test_predict_does_not_read_an_image_linked_from_outside_the_input_folder(tmp_path):
    from privet_image.inputs import read_image_inputs

    secret = _secret_file(tmp_path, "secret.png", b"\x89PNG " + SECRET.encode())
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "ok.png").write_bytes(b"\x89PNG fine")
    (folder / "z.png").symlink_to(secret)

    items = dict(read_image_inputs(folder))

    assert items["ok.png"]["image"] == b"\x89PNG fine"
    assert items["z.png"].reason == "outside_root"
    assert not _leaks(list(items.values()), SECRET.encode())


def _overflow_pipeline(tmp_path: Path, on_error: str) -> Path:
    rows = ["x,label"] + [f"{i / 10},{i % 2}" for i in range(40)]
    rows[3] = "1e308,1"  # line 4: finite in float64, inf in a float32 tensor
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    config = {
        "name": "overflow", "seed": 1,
        "data": {"source": {"name": "csv", "options": {"paths": ["data.csv"]}},
                 "on_error": on_error, "max_bad_fraction": 0.05},
        "model": {"name": "kit.probe"},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": "none"},
        "plugins": {"paths": [str(Path(__file__).resolve().parents[1] / "engine" / "plugins")]},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "pipeline.yaml"


def test_a_value_overflowing_float32_stops_preparation_naming_file_and_line(privet_cli, tmp_path):
    _overflow_pipeline(tmp_path, "fail")

    result = privet_cli("run", "pipeline.yaml")

    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("privet: error: data.csv:4: bad record: non_finite_value")
    assert "1e+308" in last and "float32" in last
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").glob("*/checkpoints/step-*")), "no training happened"


def test_a_value_overflowing_float32_is_a_counted_bad_record_in_drop_mode(tmp_path):
    from privet.config import ComponentSpec, DataConfig
    from privet.data.prepare import Preparer
    from privet.testing import make_test_host

    _overflow_pipeline(tmp_path, "drop")
    source = make_test_host().make("source", "csv", {"paths": [str(tmp_path / "data.csv")]})
    model = type("Plain", (privet.Model,), {"build": None, "encode": None, "step": None})()
    config = DataConfig(source=ComponentSpec("csv"), max_bad_fraction=0.05)

    meta = Preparer(config, source, [], model, seed=1, fingerprint_extra={}).prepare(
        tmp_path / "cache").meta

    assert meta["dropped"] == {"non_finite_value": 1} and meta["bad"] == 1
    assert meta["dropped_examples"]["non_finite_value"][0].startswith("data.csv:4: field 'x'")
    assert sum(meta["counts"].values()) == 39
