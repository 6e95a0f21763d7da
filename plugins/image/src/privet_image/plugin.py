"""Hook implementations of the ``image`` plugin. Privet imports this module on load.

The component modules imported here hold classes only: Pillow, OpenCV, numpy, torch
and torchvision are imported inside methods, so ``privet plugins`` stays fast.
"""

from __future__ import annotations

from importlib.resources import files

import privet

from . import augmenters, cleaners, dedupe, gpu_decode, models, sources, verify


@privet.hookimpl
def register_sources(register):
    register("image.folder", sources.ImageFolder)
    register("image.manifest", sources.Manifest)


@privet.hookimpl
def register_cleaners(register):
    register("image.verify", verify.Verify)
    register("image.convert", cleaners.Convert)
    register("image.resize", cleaners.Resize)
    register("image.equalize", cleaners.Equalize)
    register("image.dedupe", dedupe.Dedupe)


@privet.hookimpl
def register_augmenters(register):
    register("image.random_resized_crop", augmenters.RandomResizedCrop)
    register("image.rotate", augmenters.RandomRotation)
    register("image.flip", augmenters.RandomFlip)
    register("image.color_jitter", augmenters.ColorJitter)


@privet.hookimpl
def register_models(register):
    register("image.cnn", models.Cnn)
    register("image.resnet", models.ResNet)
    register("image.vit", models.ViT)


@privet.hookimpl
def before_run(run):
    # decode: gpu / dali on an image source: decoding moves from the workers to model.step
    gpu_decode.configure(run)


@privet.hookimpl
def starter_pipeline(modality):
    if modality == "image":
        return (files(__package__) / "starter.yaml").read_text(encoding="utf-8")
    return None
