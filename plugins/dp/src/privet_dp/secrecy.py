"""The randomness DP-SGD's guarantee rests on: Poisson draws and Gaussian noise.

The guarantee assumes an adversary cannot predict the noise or which examples a step
sampled. Seeded from the pipeline's ``seed`` (written in plain ``config.yaml``), both
could be replayed by anyone who reads the run folder. So by default (``randomness:
secret``) a private run draws a fresh 63-bit seed from the OS (``secrets``), shared by
all ranks, keeps it only in memory and in the checkpoint (sealed when the run is
encrypted), and draws noise from its own generator: a resumed run continues exactly,
two fresh runs differ. ``randomness: seeded`` derives both from the pipeline's seed,
for experiments that must repeat bit for bit (the guarantee then also assumes the seed
stays secret).
"""

from __future__ import annotations

import secrets
from typing import Any

import privet


def _shared_seed(run: Any) -> int:
    """A seed from the OS on rank 0, broadcast to every rank."""
    seed = secrets.randbits(63)
    if run.world_size > 1:
        import torch.distributed as dist

        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


class SecretRandomness:
    """The run's sampling seed and noise generator, checkpointed as ``extra_state``."""

    def __init__(self, run: Any, mode: str) -> None:
        import torch

        self.mode = mode
        self.seed = _shared_seed(run) if mode == "secret" else run.config.seed
        device = run.device if run.device is not None else torch.device("cpu")
        self.generator = torch.Generator(device=device).manual_seed(self.seed)
        self.samplers: list[Any] = []

    def bind(self, sampler: Any) -> None:
        """``sampler`` draws from this seed, now and after a restore."""
        sampler.secret = self.seed
        self.samplers.append(sampler)

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {"mode": self.mode, "seed": torch.tensor(self.seed, dtype=torch.int64),
                "noise_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise privet.ConfigError(f"the checkpoint was written with privacy.randomness: "
                                     f"{state['mode']}, not {self.mode}; resume with the run's "
                                     f"own pipeline", path="privacy.randomness")
        self.seed = int(state["seed"])
        self.generator.set_state(state["noise_rng"])
        for sampler in self.samplers:
            sampler.secret = self.seed


__all__ = ["SecretRandomness"]
