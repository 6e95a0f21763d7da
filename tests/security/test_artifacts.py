"""Attacks through artifacts: bundles and checkpoints someone else made.

Threat: a colleague, a download or a shared folder hands the user a bundle or a checkpoint.
Privet reads it as data. Each test builds a small payload that would write a marker file if
it ran, points Privet at it, and asserts the refusal (exit code 2, one line naming the file
or key), that the marker was never written, and that nothing previously written changed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from privet import CheckpointError, ExportError
from privet.export.bundle import sha256_of
from privet.testing import make_test_host

TESTS = Path(__file__).resolve().parents[1]
FEATURES = 8


# --- a small trained bundle -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_host() -> Any:
    host = make_test_host()
    host.load_path(TESTS)  # tinyplugin.py: the tiny.* components
    return host


@pytest.fixture(scope="module")
def trained(bundle_host: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run exported to ONNX and TorchScript."""
    from privet.train.engine import run_from_config

    root = tmp_path_factory.mktemp("sec")
    config = {
        "name": "sec", "seed": 1, "runs_dir": str(root / "runs"),
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "tiny.blobs", "options": {"n": 120, "features": FEATURES}},
                 "cleaners": ["tiny.scale"], "split": {"val": 0.25}},
        "model": {"name": "tiny.mlp"},
        "train": {"epochs": 1, "batch_size": 32, "progress": "none", "device": "cpu"},
        "export": {"formats": ["onnx", "torchscript"]},
    }
    run_dir, _ = run_from_config(config, host=bundle_host, base_dir=root)
    return run_dir / "export"


@pytest.fixture
def bundle(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(trained, dst)
    return dst


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"x": [0.1 * i] * FEATURES, "id": i}) + "\n"
                            for i in range(3)), encoding="utf-8")
    return path


def edit(bundle: Path, change: Any) -> None:
    """Apply ``change(meta)`` to bundle.json, as an attacker with the file can."""
    meta = json.loads((bundle / "bundle.json").read_text())
    change(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(args: list[str], monkeypatch: Any, capsys: Any,
            plugin_dirs: tuple[Path, ...] = (TESTS,)) -> tuple[int, str, str]:
    """``privet predict`` in this process; only the built-ins and ``plugin_dirs`` load."""
    from privet.cli import main

    monkeypatch.setenv("PRIVET_LOAD_PLUGINS", "")
    monkeypatch.setenv("PRIVET_PLUGIN_PATHS", "")
    dirs = [a for d in plugin_dirs for a in ("--plugin-dir", str(d))]
    with pytest.raises(SystemExit) as exit_info:
        main([*dirs, "predict", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_refused(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("privet: error: "), err
    for needle in needles:
        assert needle in err, err


# --- a bundle never names code to import --------------------------------------------------


def test_a_bundle_listing_a_plugin_folder_never_imports_it(bundle, inputs, tmp_path, monkeypatch,
                                                            capsys):
    marker = tmp_path / "imported"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "acme.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    edit(bundle, lambda m: m.update(plugin_paths=[str(evil)], plugins={"paths": [str(evil)]}))
    edit(bundle, lambda m: m["model"].update(distribution=str(evil / "acme.py")))
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 3
    assert not marker.exists()
    assert "privet_local_plugins.acme" not in __import__("sys").modules


def test_a_component_from_a_missing_distribution_fails_naming_it(bundle, inputs, tmp_path,
                                                                  monkeypatch, capsys):
    out_file = tmp_path / "out.jsonl"
    out_file.write_text("earlier results\n")
    edit(bundle, lambda m: m["model"].update(name="acme.net", plugin="acme",
                                             distribution="acme-privet", version="1.2.3",
                                             origin="entry point"))
    code, out, err = predict([str(bundle), str(inputs), "--out", str(out_file)], monkeypatch, capsys)
    assert_refused(code, out, err, "model 'acme.net'", "acme-privet 1.2.3",
                   "pip install 'acme-privet==1.2.3'")
    assert out_file.read_text() == "earlier results\n"


def test_a_bundle_of_an_in_house_plugin_asks_for_its_plugin_folder(bundle, inputs, monkeypatch,
                                                                    capsys):
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys, plugin_dirs=())
    assert_refused(code, out, err, "in-house plugin 'tinyplugin'", "--plugin-dir")


# --- artifacts that are programs need --trust-code ------------------------------------------


def evil_torchscript(path: Path, marker: Path) -> None:
    """A TorchScript module whose forward creates ``marker`` (torch.from_file, shared=True)."""
    import torch

    class Evil(torch.nn.Module):
        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :3] + torch.from_file(self.target, shared=True, size=1).sum() * 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Evil(str(marker))).save(str(path))


def plant(bundle: Path, marker: Path, key: str, loader: str) -> None:
    """Replace artifact ``key`` by the evil TorchScript, checksum updated, marked verified."""
    evil_torchscript(bundle / "evil.ts", marker)

    def change(meta: dict) -> None:
        meta["artifacts"][key] = {**meta["artifacts"].get(key, {}), "file": "evil.ts",
                                  "loader": loader, "verified": True,
                                  "sha256": sha256_of(bundle / "evil.ts")}
        meta["default_artifact"] = key

    edit(bundle, change)


@pytest.mark.parametrize("args", [["--artifact", "torchscript"], []],
                         ids=["named", "default"])
def test_a_torchscript_artifact_is_refused_without_trust_code(bundle, inputs, tmp_path,
                                                             monkeypatch, capsys, args):
    marker = tmp_path / "ran"
    plant(bundle, marker, "torchscript", "torchscript")
    if not args:  # the only artifact: the default choice must not silently pick it
        edit(bundle, lambda m: m["artifacts"].pop("onnx"))
    before = snapshot(bundle)
    code, out, err = predict([str(bundle), str(inputs), *args], monkeypatch, capsys)
    assert_refused(code, out, err, "torchscript artifact is a program", "--trust-code", "ONNX")
    assert not marker.exists()
    assert snapshot(bundle) == before


def test_a_program_disguised_as_the_onnx_artifact_is_refused(bundle, inputs, tmp_path,
                                                            monkeypatch, capsys):
    marker = tmp_path / "ran"
    plant(bundle, marker, "onnx", "torchscript")  # key says onnx, loader says TorchScript
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert code == 2 and "--trust-code" in err
    assert not marker.exists()


def test_the_default_artifact_is_onnx_even_when_bundle_json_names_a_program(
        bundle, inputs, monkeypatch, capsys):
    edit(bundle, lambda m: m.update(default_artifact="torchscript"))
    code, _, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert code == 0 and "with onnx" in err


def test_trust_code_is_what_lets_a_program_artifact_run(bundle, inputs, tmp_path, monkeypatch,
                                                        capsys):
    code, out, err = predict([str(bundle), str(inputs), "--artifact", "torchscript",
                              "--trust-code"], monkeypatch, capsys)
    assert code == 0 and "with torchscript" in err and len(out.splitlines()) == 3
    marker = tmp_path / "ran"  # and the attack above is real: trusted, the program runs
    plant(bundle, marker, "torchscript", "torchscript")
    predict([str(bundle), str(inputs), "--artifact", "torchscript", "--trust-code"],
            monkeypatch, capsys)
    assert marker.exists()


# --- paths stay inside the bundle -------------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("artifacts.onnx.file", "../../../../etc/passwd"),
    ("artifacts.onnx.file", "/etc/passwd"),
    ("files.model_state.file", "/etc/passwd"),
    ("files.model_state.file", "sub/../../outside.json"),
])
def test_a_file_path_leaving_the_bundle_is_refused_before_it_is_read(bundle, inputs, monkeypatch,
                                                                     capsys, key, value):
    section, name, field = key.split(".")
    edit(bundle, lambda m: m[section][name].update({field: value}))
    read: list[str] = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(str(self)) or real(self))
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert_refused(code, out, err, "bundle.json", key, value)
    assert not [p for p in read if "passwd" in p or "outside" in p]


def test_a_symlink_leaving_the_bundle_is_refused(bundle, inputs, tmp_path, monkeypatch, capsys):
    secret = tmp_path / "secret.onnx"
    shutil.copy(bundle / "model.onnx", secret)  # same bytes: the checksum would pass
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to(secret)
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert_refused(code, out, err, "artifacts.onnx.file", "leads outside the bundle folder")


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from privet.export.exporters import onnx_runner

    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "bundle"
    folder.mkdir()
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    with pytest.raises(ExportError, match=r"external data of tensor 'w' is '\.\./secret\.bin'"):
        onnx_runner(folder / "model.onnx")


# --- state from a bundle is validated ------------------------------------------------------


def rewrite_model_state(bundle: Path, state: Any) -> None:
    (bundle / "model_state.json").write_text(json.dumps(state))
    edit(bundle, lambda m: m["files"]["model_state"].update(
        sha256=sha256_of(bundle / "model_state.json")))


@pytest.mark.parametrize("change,needles", [
    (lambda m: m["cleaners"][0].update(state="evil"), ["cleaners.0.state must be an object"]),
    (lambda m: m["cleaners"][0].update(state={"factor": 2}), ["cleaners.0.state does not fit"]),
    (lambda m: m["model"].update(options={"hidden": "lots"}), ["model.options.hidden"]),
    (lambda m: m["model"].update(name=["tiny.mlp"]), ["model.name must be a component name"]),
    (lambda m: m["artifacts"]["onnx"].update(example_batch="4"), ["artifacts.onnx.example_batch"]),
    (lambda m: m.update(files=[]), ["files must be an object"]),
], ids=["state-type", "state-shape", "options", "name", "example-batch", "files"])
def test_bundle_json_of_the_wrong_shape_is_one_line_naming_the_key(bundle, inputs, monkeypatch,
                                                                   capsys, change, needles):
    edit(bundle, change)
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert_refused(code, out, err, "bundle.json", *needles)
    assert "Traceback" not in err


@pytest.mark.parametrize("state", [[], {"classes": 3}], ids=["list", "shape"])
def test_model_state_of_the_wrong_shape_is_one_line_naming_the_file(bundle, inputs, monkeypatch,
                                                                    capsys, state):
    rewrite_model_state(bundle, state)
    code, out, err = predict([str(bundle), str(inputs)], monkeypatch, capsys)
    assert_refused(code, out, err, "model_state.json")


# --- pickles: the checkpoint metadata unpickler ------------------------------------------------


class Call:
    """Pickles as ``fn(*args)``: what a hostile pickle asks the unpickler to run."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def global_call(module: str, name: str, *args: Any) -> bytes:
    """``module.name(*args)`` as pickle protocol 0 writes it: GLOBAL by exact name, REDUCE."""
    return f"c{module}\n{name}\n".encode() + pickle.dumps(args, protocol=0)[:-1] + b"R."


def payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that call a function named anywhere, torch.* included; each targets ``marker``."""
    import torch

    write = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": global_call("os", "system", f"touch {marker}"),
        "builtins.eval": global_call("builtins", "eval", write),
        "builtins.exec (STACK_GLOBAL)": pickle.dumps(Call(exec, write), protocol=4),
        "torch.save": global_call("torch", "save", {}, str(marker)),
        "torch.load": global_call("torch", "load", str(marker)),
        "torch.serialization.load": global_call("torch.serialization", "load", str(marker)),
        "torch._utils._rebuild_tensor_v2": global_call("torch._utils", "_rebuild_tensor_v2"),
        "dcp save": global_call("torch.distributed.checkpoint.state_dict_saver", "save", {},
                                str(marker)),
        "nested in allowed metadata": pickle.dumps(
            _metadata_holding(Call(torch.save, {}, str(marker))), protocol=4),
    }


def _metadata_holding(value: Any) -> Any:
    from torch.distributed.checkpoint.metadata import Metadata

    return Metadata(state_dict_metadata={"x": value})


def test_the_payloads_are_live_when_unpickled_plainly(tmp_path):
    marker = tmp_path / "marker"
    for name, data in payloads(marker).items():
        if name.startswith(("torch.load", "torch.serialization", "torch._utils", "dcp")):
            continue  # these read files or need more setup: refused below all the same
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pickle.loads(data)
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("name", list(payloads(Path("m"))))
def test_checkpoint_metadata_calling_any_function_is_refused(tmp_path, name):
    from privet.train.checkpoint import dcp_load_safely, safe_dcp_reader

    marker = tmp_path / "marker"
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / ".metadata").write_bytes(payloads(marker)[name])
    with pytest.raises(CheckpointError, match=r"\.metadata: refused"):
        safe_dcp_reader(str(folder)).read_metadata()
    with pytest.raises(CheckpointError, match=r"\.metadata: refused"):  # as a restore reads it
        dcp_load_safely({"w": None}, str(folder))
    assert not marker.exists()


def test_the_allowlist_holds_exact_classes_and_constants_only():
    import types

    from privet.unpickle import _torch_layout, dcp_metadata_allowlist

    for (module, name), obj in dcp_metadata_allowlist().items():
        if obj is _torch_layout:  # the local stand-in for torch.serialization._get_layout
            continue
        assert not isinstance(obj, (types.FunctionType, types.BuiltinFunctionType,
                                    types.ModuleType)), (module, name)
    with pytest.raises(pickle.UnpicklingError):
        _torch_layout("__class__")


def test_a_real_dcp_checkpoint_loads_through_the_safe_reader(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    from privet.train.checkpoint import dcp_load_safely

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    saved = {"model": net.state_dict(), "optim": opt.state_dict(), "extra": {
        "step": 7, "half": torch.ones(2, dtype=torch.bfloat16), "names": ["a", "b"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(saved, checkpoint_id=str(tmp_path / "ckpt"))
        fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
        fresh(torch.randn(5, 4)).sum().backward()
        fresh_opt.step()
        state = {"model": fresh.state_dict(), "optim": fresh_opt.state_dict(), "extra": {
            "step": 0, "half": torch.zeros(2, dtype=torch.bfloat16), "names": []}}
        dcp_load_safely(state, str(tmp_path / "ckpt"))
    for key, value in net.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    assert state["optim"]["param_groups"][0]["lr"] == 0.01
    assert state["extra"]["step"] == 7 and state["extra"]["names"] == ["a", "b"]
    assert torch.equal(state["extra"]["half"], saved["extra"]["half"])


def test_a_hostile_value_inside_dcp_data_is_refused(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    from privet.train.checkpoint import dcp_load_safely

    marker = tmp_path / "marker"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"evil": Call(torch.save, {}, str(marker))}, checkpoint_id=str(tmp_path / "ckpt"))
        assert not marker.exists()
        with pytest.raises(CheckpointError, match="refused to load checkpoint value 'evil'"):
            dcp_load_safely({"evil": None}, str(tmp_path / "ckpt"))
        assert not marker.exists()
        dcp.load({"evil": None}, checkpoint_id=str(tmp_path / "ckpt"))  # torch's own reader
    assert marker.exists()  # ... runs it: the payload is live


def test_dcp_metadata_naming_a_data_file_outside_the_checkpoint_is_refused(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    from privet.train.checkpoint import safe_dcp_reader

    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(3)}, checkpoint_id=str(folder))
    meta = pickle.loads((folder / ".metadata").read_bytes())
    meta.storage_data = {k: _StorageInfo("../../etc/passwd", v.offset, v.length)
                         for k, v in meta.storage_data.items()}
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CheckpointError, match="not a file name inside the checkpoint folder"):
        safe_dcp_reader(str(folder)).read_metadata()
