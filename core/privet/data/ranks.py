"""Preparation shared between torchrun ranks, without writing records to disk.

Under torchrun every rank holds the same source and cleaners. Rank 0 prepares; the other
ranks act as remote workers: shard ``i`` goes to rank ``i % world_size``. A rank cleans
its shards through the same per-record stage the local worker processes run (with its
own pool when ``data.prepare_workers`` > 1) and sends the outcomes to rank 0 over a gloo
process group, chunk by chunk. Rank 0 takes the shards strictly in source order, as from
its local workers, so numbering, split, order-dependent cleaners, drop counts and every
cache write stay on rank 0 and the cache is byte-identical to a one-process preparation.

Commands (a pass, or stop) go through the rendezvous store: a rank waits for the next
pass there, not in a collective, so a long ``fit`` on rank 0 does not hit the process
group's timeout. Cleaned records only cross the wire, in memory; nothing is written.
Flow control is the socket's: a rank blocks in ``send`` until rank 0 reads its chunks.
"""

from __future__ import annotations

import os
import pickle
from datetime import timedelta
from typing import Any, Callable, Iterator

from ..components import Cleaner, Model, Shard, Source
from ..errors import PrivetError
from .example_jobs import makes_groups
from .parallel import (PARALLEL_MIN_BYTES, InlineRunner, PassSpec, ProcessRunner, _export_error,
                       _rebuild, digests_of, fits_by_parts, shard_bytes, usable_cores)

_PREFIX = "privet/prep"


class RankLink:
    """The channel between rank 0 and the other ranks for one preparation.

    Made on every rank at the same point (creating a gloo group is collective). ``ok``
    is False when the ranks cannot exchange objects: rank 0 then prepares alone.
    """

    def __init__(self, rank: int, world_size: int, log: Callable[[str], None] = lambda m: None) -> None:
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _get_default_store

        self.rank, self.world_size = rank, world_size
        self.group: Any = None
        self.ok = False
        self._commands = 0
        self._stopped = False
        self.store: Any = None
        if world_size <= 1 or not dist.is_initialized():
            return
        self.store = _get_default_store()
        backend = str(dist.get_backend())
        if backend == "gloo":
            self.ok = True
        elif dist.is_gloo_available():  # the same on every rank: one torch build
            self.group = dist.new_group(backend="gloo")
            self.ok = True
        else:
            log(f"data: preparing on rank 0 alone: the {backend} backend cannot send records "
                f"between ranks and gloo is not available")

    # -- commands (store) ------------------------------------------------------------------

    def post(self, command: Callable[[int], tuple[Any, ...]]) -> None:
        """Rank 0: the next command, ``command(r)`` to each rank r > 0 (a key per rank)."""
        n = self._commands
        self._commands += 1
        for r in range(1, self.world_size):
            self.store.set(f"{_PREFIX}/cmd/{n}/{r}", pickle.dumps(command(r)))

    def next_command(self) -> tuple[Any, ...]:
        """Ranks > 0: wait for rank 0's next command (up to PRIVET_PREPARE_TIMEOUT_S)."""
        key = f"{_PREFIX}/cmd/{self._commands}/{self.rank}"
        self._commands += 1
        timeout = float(os.environ.get("PRIVET_PREPARE_TIMEOUT_S", str(6 * 3600)))
        self.store.wait([key], timedelta(seconds=timeout))
        command = pickle.loads(self.store.get(key))
        self.store.delete_key(key)
        return command

    def stop(self) -> None:
        """Rank 0: release the other ranks (always, also when preparation failed or was reused)."""
        if self.ok and self.rank == 0 and not self._stopped:
            self._stopped = True
            self.post(lambda r: ("stop",))

    def abandon(self, pass_id: int) -> None:
        """Rank 0: tell the ranks to stop sending the rest of ``pass_id``."""
        self.store.set(f"{_PREFIX}/abandon/{pass_id}", "1")

    def abandoned(self, pass_id: int) -> bool:
        return bool(self.store.check([f"{_PREFIX}/abandon/{pass_id}"]))

    # -- records (gloo) --------------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        import torch.distributed as dist

        dist.send_object_list([message], dst=0, group=self.group)

    def recv(self, src: int) -> tuple[Any, ...]:
        import torch.distributed as dist

        box: list[Any] = [None]
        try:
            dist.recv_object_list(box, src=src, group=self.group)
        except RuntimeError as err:  # the peer died or its connection closed
            raise PrivetError(f"data preparation: rank {src} stopped sending its shards ({err})") from err
        return box[0]


def local_runner(source: Source, cleaners: list[Cleaner], prefix: int, wanted: int | None,
                 shards: list[Shard], log: Callable[[str], None],
                 model: Model | None = None) -> InlineRunner | ProcessRunner:
    """This process' runner for ``shards``: worker processes (``data.prepare_workers``) or
    inline. The workers get the per-record cleaners, the next one when it computes digests
    (``Cleaner.digest_batch``), and ``model`` when it fits by parts or makes its examples per
    record or by groups."""
    if wanted is None:
        small = sum(shard_bytes(s) for s in shards) < PARALLEL_MIN_BYTES
        wanted = 1 if small else usable_cores()
    workers = max(1, min(wanted, len(shards)))
    if model is not None and not (model.per_record_examples or makes_groups(model)
                                  or fits_by_parts(model)):
        model = None
    if workers > 1:
        upto = prefix + 1 if prefix < len(cleaners) and digests_of(cleaners[prefix]) else prefix
        try:
            return ProcessRunner(source, cleaners[:upto], workers, model)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            log(f"data: preparing in one process: the source, a cleaner or the model cannot be "
                f"sent to worker processes ({err})")
    return InlineRunner(source, cleaners, model)


class RankRunner:
    """Rank 0's runner: its own shards from ``local``, the others' from their ranks, in order."""

    def __init__(self, link: RankLink, local: InlineRunner | ProcessRunner) -> None:
        self.link = link
        self.local = local
        self.workers = local.workers
        self._pass = 0
        self._open: set[int] = set()
        #: shards each rank cleaned in the last pass (``meta.json`` ``ranks``)
        self.shards_by_rank = [0] * link.world_size

    def run(self, shards: list[Shard], spec: PassSpec) -> Iterator[tuple[int, str, Any]]:
        world = self.link.world_size
        self._drain()
        self._pass += 1
        pass_id = self._pass
        self.link.post(lambda r: ("pass", pass_id, spec,
                                  [(i, s) for i, s in enumerate(shards) if i % world == r]))
        self._open = set(range(1, world))
        self.shards_by_rank = [0] * world
        mine = [i for i in range(len(shards)) if i % world == 0]
        stream = self.local.run([shards[i] for i in mine], spec)
        try:
            for index in range(len(shards)):
                owner = index % world
                for kind, payload in (self._from_local(stream, mine, index) if owner == 0
                                      else self._from_rank(owner, pass_id, index)):
                    yield index, kind, payload
                self.shards_by_rank[owner] += 1
            for r in sorted(self._open):
                self._until_done(r, pass_id)
        finally:
            stream.close()  # the generator: a ProcessRunner skips the rest of an abandoned pass
            if self._open:  # abandoned (a fit that stopped early) or failed
                self._drain()

    def model_jobs(self, jobs: list[Any], state: Any) -> Iterator[Any]:
        """Model jobs run on this rank's own workers (the cache is written here)."""
        return self.local.model_jobs(jobs, state)

    def _from_local(self, stream: Iterator[tuple[int, str, Any]], mine: list[int],
                    index: int) -> Iterator[tuple[str, Any]]:
        for j, kind, payload in stream:
            if mine[j] != index:
                raise PrivetError(f"data preparation: local shard {mine[j]} came before {index}")
            yield kind, payload
            if kind == "end":
                return

    def _from_rank(self, r: int, pass_id: int, index: int) -> Iterator[tuple[str, Any]]:
        while True:
            got_pass, got_index, kind, payload = self.link.recv(r)
            if got_pass != pass_id or kind == "done":
                if kind == "done" and got_pass == pass_id:
                    self._open.discard(r)
                    raise PrivetError(f"data preparation: rank {r} finished before shard {index}")
                continue
            if kind == "error":
                raise _rebuild(payload)
            if got_index != index:
                raise PrivetError(f"data preparation: rank {r} sent shard {got_index}, expected {index}")
            yield kind, payload
            if kind == "end":
                return

    def _until_done(self, r: int, pass_id: int) -> None:
        while True:
            got_pass, _index, kind, _payload = self.link.recv(r)
            if kind == "done" and got_pass == pass_id:
                self._open.discard(r)
                return

    def _drain(self) -> None:
        """Stop the ranks still sending the current pass and read what they sent meanwhile."""
        if not self._open:
            return
        self.link.abandon(self._pass)
        for r in sorted(self._open):
            self._until_done(r, self._pass)

    def close(self) -> None:
        """Stop the local workers (the ranks are released by :meth:`RankLink.stop`)."""
        try:
            self._drain()
        except PrivetError:
            self._open.clear()
        finally:
            self.local.close()


def serve(link: RankLink, source: Source, cleaners: list[Cleaner], prefix: int,
          wanted: int | None, log: Callable[[str], None] = lambda m: None) -> int:
    """Ranks > 0: clean the shards rank 0 assigns, pass after pass, until it says stop.

    Returns the number of shards this rank cleaned (all passes).
    """
    runner: InlineRunner | ProcessRunner | None = None
    done = 0
    try:
        while True:
            command = link.next_command()
            if command[0] != "pass":
                return done
            _kind, pass_id, spec, mine = command
            if runner is None:
                runner = local_runner(source, cleaners, prefix, wanted, [s for _i, s in mine], log)
            done += _serve_pass(link, runner, cleaners, pass_id, spec, mine)
    finally:
        if runner is not None:
            runner.close()


def _serve_pass(link: RankLink, runner: InlineRunner | ProcessRunner, cleaners: list[Cleaner],
                pass_id: int, spec: PassSpec, mine: list[tuple[int, Shard]]) -> int:
    """One pass: the outcomes of this rank's shards to rank 0, then ``done``."""
    finished = 0
    try:
        for j, state in spec.states.items():
            cleaners[j].load_state_dict(state)
        for j, kind, payload in runner.run([s for _i, s in mine], spec):
            if link.abandoned(pass_id):
                break
            link.send((pass_id, mine[j][0], kind, payload))
            finished += kind == "end"
    except Exception as err:  # noqa: BLE001 - raised on rank 0, in shard order
        link.send((pass_id, None, "error", _export_error(err)))
    link.send((pass_id, None, "done", None))
    return finished
