"""Hook implementations of privet-dp (the ``dp`` entry point).

Importing this module imports attrs and the mechanism's options only; Opacus and torch
are imported when a private run starts (``privet plugins`` stays fast).
"""

from __future__ import annotations

from privet import hookimpl

from .mechanism import DPSGD


@hookimpl
def register_privacy_mechanisms(register):
    register("dp-sgd", DPSGD)


@hookimpl
def wrap_training(run, objects):
    """Make training private when the pipeline's ``privacy.mechanism`` is ``dp-sgd``."""
    mechanism = run.components.privacy
    if isinstance(mechanism, DPSGD):
        from .wrap import make_private

        make_private(run, objects, mechanism.options)
