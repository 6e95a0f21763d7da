"""The Flower integration (``privet[flower]``): Flower's own FedAvg strategy and ClientApp.

Skipped unless flwr is installed (``tox -e flower`` installs it in its own environment).
Messages go from Flower's strategy to Flower's ClientApp through a small in-process
:class:`LocalGrid` (Flower's simulation engine needs Ray): three sites with the
non-IID data of ``privet federate``'s tests, compared with ``privet federate`` itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import pytest

flwr = pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from privet.federate import flower  # noqa: E402
from privet.federate.aggregate import FederationError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federate_support import SIZES, make_federation  # noqa: E402
from test_federate import privet  # noqa: E402

ROUNDS = 2
NODES = {101: "a", 102: "b", 103: "c"}


class LocalGrid(Grid):
    """Delivers each message to the ClientApp of its node in this process, in node order,
    and records replies and the files each node opened (``opened``)."""

    def __init__(self, app: Any, contexts: dict[int, Context]) -> None:
        self.app, self.contexts = app, contexts
        self.replies: list[Message] = []
        self.current: int | None = None
        self.opened: dict[int, set[str]] = {n: set() for n in contexts}
        self._run: Any = None
        # what a SuperLink sets in a ServerApp's process: messages are stamped with it
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("send_and_receive delivers directly")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("send_and_receive delivers directly")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        out = []
        for i, msg in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id)):
            msg.metadata.__dict__["_message_id"] = f"m{len(self.replies)}-{i}"
            node = msg.metadata.dst_node_id
            self.current = node
            try:
                out.append(self.app(msg, self.contexts[node]))
            finally:
                self.current = None
        self.replies.extend(out)
        return out


def contexts(root: Path) -> dict[int, Context]:
    return {node: Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                          node_config={"pipeline": str(root / name / "pipeline.yaml")})
            for node, name in NODES.items()}


def server_context(out: Path, **run_config: Any) -> Context:
    rc = {"num-server-rounds": ROUNDS, "local-epochs": 1, "seed": 7, "out-dir": str(out),
          **run_config}
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc)


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory) -> tuple[Path, LocalGrid, dict[str, Any]]:
    """Two Flower rounds over three sites; every file a site opens is recorded."""
    root = tmp_path_factory.mktemp("flower")
    make_federation(root, rounds=ROUNDS)
    grid = LocalGrid(flower.make_client_app(), contexts(root))

    def audit(event: str, args: tuple) -> None:
        if event == "open" and grid.current is not None and isinstance(args[0], (str, Path)):
            grid.opened[grid.current].add(str(Path(args[0]).resolve()))

    sys.addaudithook(audit)
    report = flower.run_server(grid, server_context(root / "out"))
    return root, grid, report


@pytest.mark.slow  # runs privet federate in a subprocess for the comparison
def test_flower_reaches_the_weights_and_accuracy_of_privet_federate(flower_run, tmp_path):
    root, _grid, report = flower_run
    # privet federate over a copy of the same data, pipelines and rounds
    shutil.copytree(root, tmp_path / "fed", ignore=shutil.ignore_patterns("runs", "out"))
    privet(tmp_path / "fed", "federate", str(tmp_path / "fed" / "federation.yaml"))
    fed = tmp_path / "fed" / "runs" / "fed"
    ours = load_file(str(root / "out" / "global.safetensors"))
    theirs = load_file(str(fed / f"round-{ROUNDS:03d}" / "global.safetensors"))
    assert set(ours) == set(theirs)
    for key in theirs:  # float32 (Flower) vs float64 (privet) sums: equal to rounding
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-4)
    fed_report = json.loads((fed / "report.json").read_text())
    final = report["history"][-1]
    assert [h["round"] for h in report["history"]] == list(range(1, ROUNDS + 1))
    assert abs(final["val/accuracy"] - fed_report["final"]["val/accuracy"]) < 0.01
    # it learns: three classes (chance 1/3), better after round 2 than after round 1
    assert final["val/accuracy"] > max(0.5, report["history"][0]["val/accuracy"])


def test_updates_are_weighted_by_each_sites_training_examples(flower_run):
    root, grid, _report = flower_run
    train = [m for m in grid.replies if m.metadata.message_type == "train"]
    assert len(train) == 3 * ROUNDS
    last = {m.metadata.src_node_id: m.content for m in train[-3:]}
    counts = {n: int(c["metrics"]["num-examples"]) for n, c in last.items()}
    assert counts == {n: int(SIZES[name] * 0.75) for n, name in NODES.items()}
    # the final global weights are the example-weighted average of the last updates
    total = sum(counts.values())
    keys = list(last[101]["arrays"].keys())
    expected = {k: sum(last[n]["arrays"][k].numpy() * counts[n] / total for n in last)
                for k in keys}
    uniform = {k: sum(last[n]["arrays"][k].numpy() for n in last) / 3 for k in keys}
    got = {k: v.numpy() for k, v in load_file(str(root / "out" / "global.safetensors")).items()}
    for k in keys:
        np.testing.assert_allclose(got[k], expected[k], atol=1e-6)
    assert any(not np.allclose(got[k], uniform[k], atol=1e-4) for k in keys)


def test_a_fresh_site_process_evaluates_without_training_first(flower_run):
    """A SuperNode may start one process per message: evaluate then prepares the data."""
    root, grid, _report = flower_run
    final = load_file(str(root / "out" / "global.safetensors"))
    site = flower.Site(root / "b" / "pipeline.yaml")
    assert site.hooks.run is None
    n, metrics = site.evaluate(final)
    last = [m for m in grid.replies if m.metadata.message_type == "evaluate"
            and m.metadata.src_node_id == 102][-1].content["metrics"]
    assert n == int(SIZES["b"] * 0.25) == last["num-examples"]
    assert metrics["val/accuracy"] == pytest.approx(last["val/accuracy"])
    assert metrics["val/loss"] == pytest.approx(last["val/loss"], rel=1e-6)


def test_a_site_never_opens_another_sites_folder(flower_run):
    root, grid, _report = flower_run
    for node, name in NODES.items():
        opened = grid.opened[node]
        assert any(p.startswith(str((root / name / "data").resolve())) for p in opened), name
        others = [str((root / o).resolve()) + "/" for o in NODES.values() if o != name]
        assert not [p for p in opened if any(p.startswith(o) for o in others)], name
        assert not [p for p in opened if p.startswith(str((root / "out").resolve()))], name


def test_fedprox_sends_mu_and_each_site_applies_it(tmp_path):
    make_federation(tmp_path, rounds=1)
    app = flower.make_client_app()
    runs = {}
    for agg, mu in (("fedavg", 0.0), ("fedprox", 5.0)):
        grid = LocalGrid(app, {n: c for n, c in contexts(tmp_path).items() if n != 103})
        flower._SITES.clear()
        report = flower.run_server(grid, server_context(
            tmp_path / agg, **{"num-server-rounds": 2, "aggregation": agg, "proximal-mu": mu,
                               "fraction-evaluate": 0.0}))
        assert report["aggregation"] == agg
        assert flower._SITES[(1, 101)].hooks.mu == mu  # the term each site's optimizer adds
        sent = grid.replies[-1]
        runs[agg] = load_file(str(tmp_path / agg / "global.safetensors"))
        assert sent.metadata.message_type == "train"
    assert flower.plan_from({"proximal-mu": 5.0, "local-steps": 3}) == flower.Plan(
        local_steps=3, mu=5.0)
    # the proximal term pulled round 2 towards round 1's weights: a different result
    assert any(not torch.allclose(runs["fedavg"][k], runs["fedprox"][k]) for k in runs["fedavg"])


def test_updates_of_different_shapes_are_refused_with_one_line():
    strategy = flower.make_strategy(flower.ServerSettings())

    def reply(node: int, rows: int) -> Message:
        content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(rows, 2)}),
                              "metrics": MetricRecord({"num-examples": 4})})
        msg = Message(content, dst_node_id=0, message_type="train")
        msg.metadata.__dict__["_src_node_id"] = node
        return msg

    with pytest.raises(FederationError, match=r"node 2.* w of shape \[3, 2\]"):
        strategy.aggregate_train(1, [reply(1, 2), reply(2, 3)])


@pytest.mark.parametrize("run_config, key", [
    ({"aggregation": "fedsgd"}, "aggregation"),
    ({"aggregation": "fedprox"}, "proximal-mu"),
    ({"proximal-mu": 0.1}, "proximal-mu"),
    ({"num-server-rounds": 0}, "num-server-rounds"),
])
def test_bad_run_config_is_one_error_naming_the_key(run_config, key):
    with pytest.raises(FederationError, match=rf"tool\.flwr\.app\.config.*: {key} "):
        flower.ServerSettings.from_run_config(run_config)


def test_a_node_without_a_pipeline_is_told_how_to_set_it(tmp_path):
    ctx = Context(run_id=9, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(FederationError, match="--node-config \"pipeline="):
        flower.site_for(ctx)
    ctx.node_config["pipeline"] = str(tmp_path / "missing.yaml")
    with pytest.raises(FederationError, match="missing.yaml' not found"):
        flower.site_for(ctx)


def test_the_apps_are_built_lazily_for_flwr_run():
    code = ("import sys, privet.federate.flower as f; assert 'flwr' not in sys.modules; "
            "from flwr.clientapp import ClientApp; from flwr.serverapp import ServerApp; "
            "assert isinstance(f.client_app, ClientApp) and isinstance(f.server_app, ServerApp)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
