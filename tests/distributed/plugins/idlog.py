"""Test plugin: logs every training example index each rank loads, per epoch.

Loaded with ``--plugin-dir`` so it also proves in-house plugins load inside every
torchrun worker. Writes ``$IDLOG_DIR/rank<R>.txt`` lines ``epoch index``.
"""

import os

import privet


@privet.hookimpl
def wrap_training(run, objects):
    folder = os.environ.get("IDLOG_DIR")
    if not folder:
        return
    dataset = objects.train_loader.dataset
    original = dataset.__getitems__
    path = os.path.join(folder, f"rank{run.rank}.txt")

    def logged(sampled):
        with open(path, "a", encoding="utf-8") as fh:
            fh.writelines(f"{sampled.epoch} {index}\n" for index in sampled.indices.tolist())
        return original(sampled)

    dataset.__getitems__ = logged  # the DataLoader fetcher looks it up on the instance


@privet.hookimpl
def before_run(run):
    folder = os.environ.get("IDLOG_DIR")
    if folder:
        with open(os.path.join(folder, f"before_run.rank{run.rank}"), "w") as fh:
            fh.write(str(run.world_size))
