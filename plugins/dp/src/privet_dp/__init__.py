"""privet-dp: differentially private training for Privet (DP-SGD through Opacus).

A pipeline's ``privacy: {mechanism: dp-sgd, ...}`` section turns it on; the plugin's
``wrap_training`` hook swaps in Opacus' per-sample gradients, clipping, noise and
accountant, and Poisson sampling. Nothing here changes the core.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
