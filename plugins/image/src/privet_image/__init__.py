"""privet-image: image classification for Privet.

Sources (``image.folder``, ``image.manifest``), cleaners (``image.verify``,
``image.convert``, ``image.resize``, ``image.equalize``, ``image.dedupe``), seeded
torchvision augmenters and classifiers (``image.cnn``, ``image.resnet``, ``image.vit``).
The hooks live in :mod:`privet_image.plugin`.
"""

__version__ = "0.1.0"
