"""torch.distributed set-up from the variables torchrun sets (RANK, WORLD_SIZE, ...)."""

from __future__ import annotations

import faulthandler
import gc
import os
from typing import Any

import attrs


@attrs.define
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False


def setup(device_name: str) -> DistEnv:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not faulthandler.is_enabled():
        # a worker killed by a fatal signal (a C++ abort in a communication thread, say)
        # leaves its Python stacks in its log instead of only torchrun's "Signal 6"
        faulthandler.enable()
    if dist.is_initialized():
        return DistEnv(rank, local_rank, world, False)
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    store = _generation_store(rank, world)
    if store is not None:
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    else:
        dist.init_process_group(backend=backend)
    return DistEnv(rank, local_rank, world, True)


def _generation_store(rank: int, world: int) -> Any:
    """A store namespace of its own for each (re)start of the worker group.

    Under torchrun's c10d rendezvous the workers share the agent's store across
    restarts, so a restarted group can read the previous group's addresses and hang
    or fail to connect. Each worker counts itself in; ``(count - 1) // world`` is the
    same for all workers of one start and new for the next.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    from torch.distributed import PrefixStore, TCPStore

    base = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                    is_master=False, timeout=timedelta(minutes=10))
    generation = (base.add("privet/workers_started", 1) - 1) // world
    return PrefixStore(f"privet/generation_{generation}", base)


def teardown(env: DistEnv, *, together: bool = True) -> None:
    """Leave the group. After a successful run all ranks leave together: a rank that
    tears its connections down while another still uses them can abort the other
    (gloo's threads on a reset connection). After a failure, no waiting for peers."""
    if env.initialized_here:
        import torch.distributed as dist

        if dist.is_initialized():
            if together:
                try:
                    dist.barrier()
                except Exception:  # a peer failed meanwhile: nothing to wait for
                    pass
            # The run's objects are unreachable now, but a reference cycle can keep the
            # DDP reducer, and with it the process group, alive until the interpreter
            # exits; gloo's threads are then torn down during finalization, which aborts
            # the process ("terminate called without an active exception"). Free them
            # while the interpreter is whole, then leave the group.
            gc.collect()
            dist.destroy_process_group()


def announce(env: DistEnv, key: str) -> None:
    """Rank 0 tells the others that ``key`` is done (see :func:`wait_for`)."""
    if env.world_size > 1:
        from torch.distributed.distributed_c10d import _get_default_store

        _get_default_store().set(f"privet/{key}", "1")


def wait_for(env: DistEnv, key: str) -> None:
    """Wait on the store for rank 0's :func:`announce`, up to PRIVET_PREPARE_TIMEOUT_S.

    A store wait, unlike a barrier, does not fall under the collectives' timeout (ten
    minutes for NCCL), so a long data preparation on rank 0 does not kill the job.
    """
    if env.world_size > 1:
        from datetime import timedelta

        from torch.distributed.distributed_c10d import _get_default_store

        timeout = float(os.environ.get("PRIVET_PREPARE_TIMEOUT_S", str(6 * 3600)))
        _get_default_store().wait([f"privet/{key}"], timedelta(seconds=timeout))


def broadcast(value: Any, env: DistEnv) -> Any:
    """Rank 0's ``value`` on every rank."""
    if env.world_size <= 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_module(module: Any, strategy: str, env: DistEnv, device: Any) -> Any:
    """DDP (or FSDP2 ``fully_shard``) around the module in a distributed run.

    Under FSDP each block the module names in ``_no_split_modules`` (Hugging Face's
    convention: the decoder layers) is sharded as a unit of its own, so only one block's
    weights are gathered at a time; the root takes the rest.
    """
    if env.world_size <= 1:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in _shard_units(module):
            fully_shard(block)
        return fully_shard(module)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def _shard_units(module: Any) -> list[Any]:
    """The submodules whose class ``module`` lists in ``_no_split_modules`` (found through
    wrappers such as peft's, which forward attribute reads to the model they wrap)."""
    try:
        names = set(getattr(module, "_no_split_modules", None) or ())
    except Exception:  # a wrapper whose attribute forwarding fails: shard the root only
        names = set()
    return [m for m in module.modules() if m is not module and type(m).__name__ in names]
