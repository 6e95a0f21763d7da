"""The plugin as a whole: what it registers, what importing it costs, its starter pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import privet
from privet.config import load_config
from privet_image import plugin
from privet_image.inputs import read_image_inputs
from privet_image.shapes import write_folder

REPO = Path(__file__).resolve().parents[3]


def test_every_component_is_registered_under_the_image_prefix(host):
    assert host.catalog.by_plugin("image") == {
        "source": ["image.folder", "image.manifest"],
        "cleaner": ["image.convert", "image.dedupe", "image.equalize", "image.resize",
                    "image.verify"],
        "augmenter": ["image.color_jitter", "image.flip", "image.random_resized_crop",
                      "image.rotate"],
        "model": ["image.cnn", "image.resnet", "image.vit"],
    }


def test_every_component_has_a_summary_line_for_privet_plugins(host):
    for entry in host.catalog:
        if entry.plugin == "image":
            assert entry.summary, entry.name


def test_importing_the_plugin_imports_no_heavy_library():
    code = ("import sys, privet_image.plugin; "
            "print([m for m in ('torch', 'torchvision', 'PIL', 'cv2', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"


def test_the_installed_entry_point_names_the_plugin_module():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="privet.plugins")}
    assert eps.get("image") == "privet_image.plugin"


def test_starter_pipeline_is_given_for_image_only(host):
    assert host.starter_pipeline("text") is None
    assert plugin.starter_pipeline("timeseries") is None
    assert "image.folder" in host.starter_pipeline("image")


def test_starter_pipeline_validates_once_its_data_folder_exists(host, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(plugin.starter_pipeline("image"))
    with pytest.raises(privet.ConfigError, match="data.source.options.root: file not found"):
        load_config(path, catalog=host.catalog)
    write_folder(tmp_path / "data" / "images", per_class=2, size=16)
    loaded = load_config(path, catalog=host.catalog)
    names = [spec.name for _kind, _path, spec in loaded.component_specs()]
    assert names[:2] == ["image.folder", "image.verify"] and "image.cnn" in names
    assert loaded.config.plugins.required == ["image"]


def test_example_pipeline_validates_against_the_catalog(host, tmp_path):
    example = REPO / "examples" / "image_shapes.yaml"
    raw = yaml.safe_load(example.read_text())
    write_folder(tmp_path / "data" / "shapes", per_class=2, size=16)
    loaded = load_config(data=raw, base_dir=tmp_path, catalog=host.catalog)
    assert loaded.options["model"].input_size == 32


def test_example_data_script_writes_an_image_folder(tmp_path):
    subprocess.run([sys.executable, str(REPO / "examples" / "make_image_data.py"),
                    "--out", str(tmp_path / "shapes"), "--per-class", "3", "--no-mess"],
                   check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == ["circle", "square", "triangle"]
    assert len(list((tmp_path / "shapes" / "square").glob("*.png"))) == 3


def test_prediction_inputs_from_a_file_a_folder_and_a_listing(tmp_path, images):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(images.png())
    (folder / "sub" / "b.jpg").write_bytes(images.jpeg())
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.png").write_bytes(b"")
    items = list(read_image_inputs(folder))
    assert [loc for loc, _ in items] == ["a.png", "notes.txt", "sub/b.jpg"]
    assert items[0][1]["image"] == images.png() and items[2][1]["path"] == "sub/b.jpg"
    assert isinstance(items[1][1], privet.BadRecord) and items[1][1].reason == "unsupported_extension"

    assert [loc for loc, _ in read_image_inputs(folder / "a.png")] == ["a.png"]

    listing = folder / "list.jsonl"
    listing.write_text("\n".join(json.dumps(r) for r in
                                 [{"path": "a.png", "id": 7}, {"path": "gone.png"}, {"x": 1}]))
    got = list(read_image_inputs(listing))
    assert got[0][1]["id"] == 7 and got[0][1]["image"] == images.png()
    assert (got[1][0], got[1][1].reason) == ("list.jsonl:2", "missing_file")
    assert got[2][1].reason == "missing_path"

    with pytest.raises(privet.UsageError, match="input not found"):
        list(read_image_inputs(tmp_path / "nope"))
