"""image.cnn / image.resnet / image.vit: encoding, label map, loss, local pretrained weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import privet

TINY_VIT = {"variant": "custom", "input_size": 32, "patch_size": 8, "num_layers": 2,
            "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}


def fitted(host, name, options=None, classes=("circle", "square", "triangle")):
    model = host.make("model", name, options or {})
    model.fit([{"label": c} for c in classes])
    return model


def test_fit_learns_a_sorted_label_map_saved_as_state(host):
    model = host.make("model", "image.cnn")
    model.fit([{"label": "dog"}, {"label": "cat"}, {"label": "dog"}, {"label": "emu"}])
    assert model.state_dict() == {"classes": ["cat", "dog", "emu"]}
    other = host.make("model", "image.cnn")
    other.load_state_dict(model.state_dict())
    assert other.classes == ["cat", "dog", "emu"]


def test_fit_with_a_single_class_is_a_data_error(host):
    with pytest.raises(privet.DataError, match="at least 2 classes"):
        host.make("model", "image.cnn").fit([{"label": "cat"}] * 3)


def test_encode_accepts_bytes_pil_and_tensor_alike(host, images):
    model = fitted(host, "image.cnn", {"input_size": 40})
    data = images.png(40, 40, seed=3)
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    tensor = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    x_bytes, y = model.encode({"image": data, "label": "square"})
    x_pil, _ = model.encode({"image": pil, "label": "square"})
    x_tensor, _ = model.encode({"image": tensor, "label": "square"})
    assert y == 1 and x_bytes.dtype == torch.float32 and x_bytes.shape == (3, 40, 40)
    assert torch.equal(x_bytes, x_pil) and torch.equal(x_bytes, x_tensor)
    # normalised with ImageNet's mean and std
    expected = (tensor[:, 0, 0].float() / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    assert torch.allclose(x_bytes[:, 0, 0], expected, atol=1e-6)


@pytest.mark.parametrize("aspect", ["crop", "pad", "stretch"])
def test_encode_brings_every_size_to_input_size(host, images, aspect):
    model = fitted(host, "image.cnn", {"input_size": 24, "aspect": aspect})
    for w, h in ((64, 32), (10, 50), (24, 24)):
        x, _ = model.encode({"image": images.png(w, h), "label": "circle"})
        assert x.shape == (3, 24, 24)


def test_encode_pad_leaves_zero_borders_before_normalisation(host, images):
    model = fitted(host, "image.cnn", {"input_size": 20, "aspect": "pad", "mean": [0, 0, 0],
                                       "std": [1, 1, 1]})
    white = images.save(Image.new("RGB", (40, 20), (255, 255, 255)))
    x, _ = model.encode({"image": white, "label": "circle"})
    assert x[:, 0, :].abs().sum() == 0 and x[:, 10, 10].tolist() == [1.0, 1.0, 1.0]


def test_encode_matches_channels_to_the_model(host, images):
    grey_model = fitted(host, "image.cnn", {"channels": 1})
    x, _ = grey_model.encode({"image": images.png(32, 32), "label": "circle"})
    assert x.shape == (1, 32, 32)
    rgb_model = fitted(host, "image.cnn")
    x, _ = rgb_model.encode({"image": images.gray_png(), "label": "circle"})
    assert x.shape == (3, 32, 32) and torch.equal(x[0] * 0.229 + 0.485, x[2] * 0.225 + 0.406)
    x, _ = rgb_model.encode({"image": images.cmyk_jpeg(), "label": "circle"})
    assert x.shape == (3, 32, 32)


def test_unknown_or_missing_labels_are_dropped_with_a_reason(host, images):
    model = fitted(host, "image.cnn")
    with pytest.raises(privet.DropRecord, match="unknown_label"):
        model.encode({"image": images.png(), "label": "hexagon"})
    with pytest.raises(privet.DropRecord, match="missing_label"):
        model.encode({"image": images.png()})


def test_step_returns_the_summed_loss_and_the_item_count(host, images):
    model = fitted(host, "image.cnn", {"widths": [8, 16]})
    module = model.build().eval()  # no dropout: two forward passes agree
    batch = model.collate([model.encode({"image": images.png(seed=i), "label": lab})
                           for i, lab in enumerate(["circle", "square", "triangle", "square"])])
    out = model.step(module, batch)
    logits = module(batch[0])
    mean = torch.nn.functional.cross_entropy(logits, batch[1])
    assert out.count == 4 and torch.allclose(out.loss_sum, 4 * mean)
    assert out.predictions.shape == (4, 3) and out.targets.tolist() == [0, 1, 2, 1]
    assert model.example_inputs(batch)[0] is batch[0]
    assert model.input_names() == ["image"] and model.output_names() == ["logits"]


@pytest.mark.parametrize("name, options", [
    ("image.cnn", {"norm": "group"}),
    ("image.resnet", {"norm": "group", "stem": "small", "input_size": 32}),
    ("image.vit", TINY_VIT),
])
def test_models_build_for_the_learned_classes(host, name, options):
    module = fitted(host, name, options).build()
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_group_norm_resnet_has_no_batch_norm_and_learns_a_batch_of_two(host):
    model = fitted(host, "image.resnet", {"norm": "group", "stem": "small", "input_size": 8},
                   classes=("a", "b"))
    module = model.build()
    kinds = {type(m).__name__ for m in module.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds
    torch.manual_seed(0)
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    first = model.step(module, batch).loss_sum.item()
    for _ in range(8):
        opt.zero_grad()
        model.step(module, batch).loss_sum.backward()
        opt.step()
    assert model.step(module, batch).loss_sum.item() < 0.5 * first


def test_a_missing_pretrained_file_is_a_config_error_naming_it(host, tmp_path):
    missing = tmp_path / "weights" / "resnet18.pth"
    with pytest.raises(privet.ConfigError) as info:
        host.make("model", "image.resnet", {"pretrained_path": str(missing)})
    assert "pretrained_path" in str(info.value) and str(missing) in str(info.value)


def test_pretrained_state_dict_is_loaded_and_the_head_reinitialised(host, tmp_path):
    source = fitted(host, "image.resnet", {"input_size": 32}, classes=[str(i) for i in range(10)])
    donor = source.build()
    path = tmp_path / "resnet18.pth"
    torch.save(donor.state_dict(), path)
    model = fitted(host, "image.resnet", {"input_size": 32, "pretrained_path": str(path)})
    module = model.build()
    assert torch.equal(module.conv1.weight, donor.conv1.weight)
    assert torch.equal(module.layer4[1].bn2.running_var, donor.layer4[1].bn2.running_var)
    assert module.fc.weight.shape == (3, 512)
    assert model.reinitialised == ["fc.weight", "fc.bias"]


def test_pretrained_safetensors_and_wrapped_checkpoints_load(host, tmp_path):
    from safetensors.torch import save_file

    donor = fitted(host, "image.cnn", {"widths": [8, 16]}).build()
    save_file(donor.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items()}},
               tmp_path / "ckpt.pt")
    for name in ("w.safetensors", "ckpt.pt"):
        module = fitted(host, "image.cnn", {"widths": [8, 16],
                                            "pretrained_path": str(tmp_path / name)}).build()
        assert torch.equal(module.fc.weight, donor.fc.weight)


def test_pretrained_rgb_weights_adapt_to_grey_input(host, tmp_path):
    donor = fitted(host, "image.resnet", {"input_size": 32}).build()
    torch.save(donor.state_dict(), tmp_path / "rgb.pt")
    module = fitted(host, "image.resnet", {"input_size": 32, "channels": 1,
                                           "pretrained_path": str(tmp_path / "rgb.pt")}).build()
    assert torch.allclose(module.conv1.weight, donor.conv1.weight.sum(1, keepdim=True))


def test_pretrained_vit_is_interpolated_to_another_input_size(host, tmp_path):
    donor = fitted(host, "image.vit", TINY_VIT).build()
    torch.save(donor.state_dict(), tmp_path / "vit.pt")
    module = fitted(host, "image.vit", {**TINY_VIT, "input_size": 48,
                                        "pretrained_path": str(tmp_path / "vit.pt")}).build()
    assert module.encoder.pos_embedding.shape == (1, 37, 32)
    assert torch.equal(module.encoder.layers[1].mlp[0].weight, donor.encoder.layers[1].mlp[0].weight)


def test_weights_of_another_architecture_are_refused(host, tmp_path):
    donor = fitted(host, "image.resnet", {"depth": 34, "input_size": 32}).build()
    torch.save(donor.state_dict(), tmp_path / "r34.pt")
    model = fitted(host, "image.resnet", {"input_size": 32, "pretrained_path": str(tmp_path / "r34.pt")})
    with pytest.raises(privet.ConfigError, match="does not fit this model: layer1.2"):
        model.build()


def test_a_file_that_is_not_a_state_dict_is_refused(host, tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for name in ("list.pt", "junk.pt"):
        model = fitted(host, "image.cnn", {"pretrained_path": str(tmp_path / name)})
        with pytest.raises(privet.ConfigError, match="save (one|them) with torch.save"):
            model.build()


@pytest.mark.parametrize("name, options, message", [
    ("image.vit", {"input_size": 100}, "multiple of the patch size 16"),
    ("image.vit", {"variant": "custom"}, "variant custom needs"),
    ("image.resnet", {"depth": 19}, "depth"),
    ("image.cnn", {"input_size": 4}, "too small for 3 pooling stages"),
    ("image.cnn", {"channels": 2}, "channels must be 1 .grey. or 3"),
])
def test_bad_model_options_are_config_errors(host, name, options, message):
    with pytest.raises(privet.ConfigError, match=message):
        host.make("model", name, options)


def test_build_before_fit_says_what_to_do(host):
    with pytest.raises(privet.TrainingError, match="fit"):
        host.make("model", "image.cnn").build()
