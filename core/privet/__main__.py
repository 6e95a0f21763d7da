"""``python -m privet`` / ``torchrun -m privet run FILE``."""

from .cli import entry

entry()
