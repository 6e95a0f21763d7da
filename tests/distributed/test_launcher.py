"""``privet run --nproc-per-node``, the global batch across world sizes, and the deployment files.

The training runs are real processes (torchrun over gloo on CPU) on the tiny pipeline of
test_torchrun.py. Each run happens once per session and is shared by the tests that read
it; under pytest-xdist the workers share them through a lock (the run is made by the first
worker that needs it). The files in contrib/deploy and the commands in docs/deploy are
checked against the parsers that will read them: YAML, bash, torchrun's own argument parser
and the ``privet run`` command, so a misspelt flag fails here rather than on a cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
PLUGINS = Path(__file__).resolve().parent / "plugins"
DEPLOY = ROOT / "contrib" / "deploy"
DOCS = ROOT / "docs" / "deploy"
SBATCH = DEPLOY / "slurm" / "train.sbatch"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
TIMEOUT = 300


# -- running pipelines ------------------------------------------------------------------------


def privet_command() -> list[str]:
    """The ``privet`` console script of this environment (``python -m privet`` without one)."""
    script = Path(sys.executable).with_name("privet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "privet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pipeline(folder: Path, **train: Any) -> Path:
    """The tiny pipeline of test_torchrun.py, without dropout (ranks would draw other masks)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "dist",
        "seed": 3,
        "runs_dir": str(folder / "runs"),
        "plugins": {"paths": [str(TESTS)]},
        "data": {"source": {"name": "tiny.blobs", "options": {"n": 600}}},
        "model": {"name": "tiny.mlp", "options": {"dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 8, "deterministic": True, "progress": "none",
                  "checkpoint": {"every_n_steps": 10, "keep_last": 2}, **train},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without PRIVET_* and test-plugin variables; installed plugins off."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRIVET_", "SLURM_", "TORCHELASTIC_", "PET_"))
           and k not in ("KILL_MARKER", "KILL_EPOCH", "KILL_RANK", "IDLOG_DIR", "RANK", "WORLD_SIZE",
                         "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"PRIVET_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    # the head of stderr holds the workers' own errors, its tail torchrun's summary
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[:6000] + proc.stderr[-3000:]
    return proc


def fake_slurm(folder: Path) -> Path:
    """``srun`` (runs its command once: a one-node allocation) and ``scontrol show hostnames``."""
    folder.mkdir(parents=True, exist_ok=True)
    srun = folder / "srun"
    srun.write_text('#!/bin/bash\nwhile [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    scontrol = folder / "scontrol"
    scontrol.write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] || exit 1\necho "$3" | tr , "\\n"\n')
    for shim in (srun, scontrol):
        shim.chmod(0o755)
    return folder


def launch_privet_run(folder: Path, nproc: int, **train: Any) -> None:
    """``privet run FILE`` (with ``--nproc-per-node N`` it re-launches itself under torchrun)."""
    pipeline = write_pipeline(folder, **train)
    cmd = privet_command() + ["run", str(pipeline)] + (["--nproc-per-node", str(nproc)] if nproc > 1 else [])
    check(subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT))


def launch_sbatch(folder: Path) -> None:
    """The Slurm script itself on a one-node "allocation", two workers per node; rank 1 is
    killed once after the first epoch, so torchrun restarts the workers, which must continue."""
    pipeline = write_pipeline(folder)
    shims = fake_slurm(folder / "bin")
    env = clean_env(
        PATH=os.pathsep.join([str(shims), str(Path(sys.executable).parent), os.environ["PATH"]]),
        SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_JOB_NODELIST="127.0.0.1", SLURM_CPUS_PER_TASK="2",
        NPROC_PER_NODE="2", MAX_RESTARTS="2", RDZV_PORT=str(free_port()),
        PRIVET_PLUGIN_PATHS=str(PLUGINS), KILL_MARKER=str(folder / "killed"), KILL_EPOCH="0", KILL_RANK="1")
    env.pop("OMP_NUM_THREADS")  # the script derives it from the CPUs per task
    proc = check(subprocess.run(["bash", str(SBATCH), str(pipeline)], env=env, capture_output=True, text=True,
                                timeout=TIMEOUT, cwd=folder))
    (folder / "stdout.txt").write_text(proc.stdout)


RECIPES = {  # run name -> how it is made (processes x batch_size x accumulate)
    "launcher-2x8-acc2": lambda folder: launch_privet_run(folder, 2, accumulate=2),
    "single-1x32": lambda folder: launch_privet_run(folder, 1, batch_size=32),
    "single-1x8-acc2": lambda folder: launch_privet_run(folder, 1, accumulate=2),
    "sbatch-2x8": launch_sbatch,
}


class Runs:
    """The runs of RECIPES, each made on first use, once per session (shared by xdist workers)."""

    def __init__(self, root: Path, shared: bool) -> None:
        self.root = root
        self.shared = shared

    def get(self, name: str) -> Path:
        """The run folder of the run ``name``, made if it does not exist yet."""
        if not self.shared:
            return self._existing(name) or self._make(name)
        from filelock import FileLock

        with FileLock(str(self.root / f"{name}.lock")):
            return self._existing(name) or self._make(name)

    def _existing(self, name: str) -> Path | None:
        done = self.root / name / "run_dir.txt"
        return Path(done.read_text()) if done.exists() else None

    def _make(self, name: str) -> Path:
        folder = self.root / name
        RECIPES[name](folder)
        made = [p for p in (folder / "runs").iterdir() if not p.name.startswith(".")]
        assert len(made) == 1, f"{name}: expected one run folder, found {made}"
        (folder / "run_dir.txt").write_text(str(made[0]))
        return made[0]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, worker_id) -> Runs:
    if worker_id == "master":
        return Runs(tmp_path_factory.mktemp("launcher-runs"), shared=False)
    root = tmp_path_factory.getbasetemp().parent / "launcher-runs"  # this session's, all workers
    root.mkdir(exist_ok=True)
    return Runs(root, shared=True)


@pytest.fixture(scope="session")
def worker_id(request) -> str:
    """pytest-xdist's worker id ("master" without xdist), defined here so xdist is optional."""
    workerinput = getattr(request.config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "master"


def report_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def final_weights(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "model.safetensors"))


def assert_same_training(a: Path, b: Path) -> None:
    """Same steps, same validation loss every epoch and the same final weights (fp32 reorder)."""
    import torch

    ra, rb = report_of(a), report_of(b)
    assert ra["steps"] == rb["steps"]
    assert len(ra["history"]) == len(rb["history"]) == 2
    for ha, hb in zip(ra["history"], rb["history"]):
        assert ha["val/loss"] == pytest.approx(hb["val/loss"], rel=1e-4, abs=1e-6)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


# -- the launcher and the global batch ---------------------------------------------------------


@pytest.mark.slow
def test_privet_run_nproc_per_node_2_states_world_size_and_global_batch_everywhere(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = runs.get("launcher-2x8-acc2")
    report = report_of(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())

    assert report["status"] == "completed"
    assert report["world_size"] == 2 == manifest["world_size"]
    assert report["global_batch"] == 2 * 8 * 2 == manifest["global_batch"]
    # every rank's samples, not rank 0's share
    assert report["samples_seen"] == report["data"]["counts"]["train"] * len(report["history"])
    assert manifest["elastic_run_id"] not in (None, "none")  # set by the re-launch through torchrun
    events = EventAccumulator(str(run_dir / "tensorboard" / "hparams"))
    events.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["global_batch"].number_value == 32
    assert hparams["batch_size"].number_value == 8  # per device
    assert hparams["accumulate"].number_value == 2


@pytest.mark.slow
def test_ddp_with_accumulation_matches_one_process_with_a_four_times_larger_batch(runs):
    ddp = runs.get("launcher-2x8-acc2")  # 2 processes x batch 8 x accumulate 2
    single = runs.get("single-1x32")  # 1 process x batch 32

    assert report_of(ddp)["global_batch"] == report_of(single)["global_batch"] == 32
    assert_same_training(ddp, single)


@pytest.mark.slow
def test_halving_the_world_and_doubling_accumulation_keeps_the_global_batch_and_the_result(runs):
    two = runs.get("sbatch-2x8")  # 2 processes x batch 8 (launched by the Slurm script)
    one = runs.get("single-1x8-acc2")  # 1 process x batch 8 x accumulate 2

    assert report_of(two)["world_size"] == 2 and report_of(one)["world_size"] == 1
    assert report_of(two)["global_batch"] == report_of(one)["global_batch"] == 16
    assert_same_training(two, one)


# -- Slurm ----------------------------------------------------------------------------------------


def test_sbatch_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)

    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_sbatch_script_trains_with_the_job_id_as_rendezvous_id_and_resumes_after_a_killed_worker(runs):
    run_dir = runs.get("sbatch-2x8")
    folder = run_dir.parent.parent
    report = report_of(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())

    assert (folder / "killed").exists(), "the worker was never killed"
    assert manifest["elastic_run_id"] == "4242"  # --rdzv-id=$SLURM_JOB_ID
    assert report["status"] == "completed" and report["world_size"] == 2
    assert [h["epoch"] for h in report["history"]] == [1, 2]  # continued, not restarted from 0
    assert "job 4242, 1 node(s) x 2 worker(s), rendezvous 127.0.0.1:" in (folder / "stdout.txt").read_text()


def sbatch_torchrun_args(env: dict[str, str]) -> list[str]:
    """The torchrun arguments of the script's srun line, with the shell variables expanded."""
    text = SBATCH.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.lstrip().startswith("srun "))
    words = [w for w in shlex.split(line) if w != "$@"]  # the script's own arguments: none here
    words = [re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m.group(1) or m.group(2)], w) for w in words]
    return words[words.index("torchrun") + 1:]


def test_sbatch_torchrun_line_uses_c10d_with_the_slurm_job_id():
    env = {"SLURM_NNODES": "4", "NPROC_PER_NODE": "8", "RDZV_HOST": "node001", "RDZV_PORT": "29400",
           "SLURM_JOB_ID": "918273", "MAX_RESTARTS": "3", "PIPELINE": "pipeline.yaml"}
    args = parse_torchrun(sbatch_torchrun_args(env))

    assert args.rdzv_backend == "c10d"
    assert args.rdzv_id == "918273"
    assert args.rdzv_endpoint == "node001:29400"
    assert (args.nnodes, args.nproc_per_node, args.max_restarts) == ("4", "8", 3)
    assert "#SBATCH --ntasks-per-node=1" in SBATCH.read_text()  # one agent per node


# -- torchrun and privet command lines -------------------------------------------------------------


def parse_torchrun(argv: list[str]) -> Any:
    """torchrun's own parser (a bad flag exits); then the privet part through ``privet run``."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args([a for a in argv if a])
    assert args.module and args.training_script == "privet", argv
    parse_privet(args.training_script_args)
    return args


def parse_privet(argv: list[str]) -> None:
    """``privet run ...`` arguments as the ``run`` command parses them (errors raise);
    ``privet resume RUN_DIR`` takes the folder alone."""
    from privet.commands.run import run as run_command

    argv = [a for a in argv if a]
    assert argv[0] in ("run", "resume"), argv
    if argv[0] == "resume":
        assert len(argv) == 2 and not argv[1].startswith("-"), argv
        return
    run_command.make_context("run", argv[1:])


def k8s_expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """Literal values, and a ``<label:KEY>`` marker for variables from a pod label."""
    out = {}
    for item in container.get("env", []):
        if "value" in item:
            out[item["name"]] = item["value"]
        else:
            out[item["name"]] = "<{}>".format(item["valueFrom"]["fieldRef"]["fieldPath"])
    return out


def check_pod(pod: dict[str, Any], container_name: str) -> tuple[Any, dict[str, Any]]:
    """Common to both manifests: torchrun with valid flags, shared memory, mounted volumes."""
    (container,) = [c for c in pod["containers"] if c["name"] == container_name]
    env = container_env(container)
    argv = [k8s_expand(a, env) for a in container["args"]]
    assert container["command"] == ["torchrun"]
    args = parse_torchrun(argv)
    assert args.rdzv_backend == "c10d"
    assert int(args.max_restarts) >= 1
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == args.nproc_per_node
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    assert "/dev/shm" in mounts
    return args, container


def test_indexed_job_and_headless_service_fit_together():
    service, job = yaml.safe_load_all((DEPLOY / "kubernetes" / "job-headless.yaml").read_text())
    assert (service["kind"], job["kind"]) == ("Service", "Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]

    args, container = check_pod(pod, "privet")

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["completionMode"] == "Indexed" and pod["subdomain"] == service["metadata"]["name"]
    assert pod["restartPolicy"] == "OnFailure"
    assert int(args.nnodes) == spec["completions"] == spec["parallelism"]
    host, port = args.rdzv_endpoint.split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # pod 0's DNS name
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in container["ports"]}
    assert args.rdzv_id == "<metadata.labels['batch.kubernetes.io/controller-uid']>"  # the Job's uid


def test_pytorchjob_replicas_share_one_torchrun_command_and_rendezvous_on_the_master():
    (job,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    master, worker = replicas["Master"], replicas["Worker"]

    args, container = check_pod(master["template"]["spec"], "pytorch")  # the operator's container name

    assert master["template"] == worker["template"]
    assert master["replicas"] == 1
    assert int(args.nnodes) == master["replicas"] + worker["replicas"]
    host, port = args.rdzv_endpoint.split(":")
    assert host == f"{job['metadata']['name']}-master-0"  # the operator's Service for the master pod
    assert {"name": "pytorchjob-port", "containerPort": int(port)} in container["ports"]
    assert args.rdzv_id == "<metadata.labels['training.kubeflow.org/job-name']>"


def doc_commands(program: str) -> list[tuple[str, list[str]]]:
    """Every ``program ...`` command in the shell blocks of docs/deploy/*.md (also after
    ``srun ...`` or ``docker run IMAGE``), from the program's name on; ``$VARS`` become 2."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if program in words:
                    words = words[words.index(program):]
                    found.append((doc.name, [re.sub(r"\$\{?\w+\}?", "2", w) for w in words]))
    return found


def test_torchrun_commands_in_the_deployment_docs_parse():
    commands = doc_commands("torchrun")
    assert len(commands) >= 4, commands

    for doc, words in commands:
        args = parse_torchrun(words[1:])
        if not args.standalone:  # several machines: c10d, and an id to resume by
            assert args.rdzv_backend == "c10d" and args.rdzv_id != "none", f"{doc}: {' '.join(words)}"


def test_privet_run_commands_in_the_deployment_docs_parse():
    commands = [(doc, words) for doc, words in doc_commands("privet") if words[1:2] == ["run"]]
    assert any("--nproc-per-node" in words for _, words in commands), commands

    for _doc, words in commands:
        parse_privet(words[1:])


# -- Docker ---------------------------------------------------------------------------------------


def dockerfile() -> tuple[str, dict[str, str]]:
    """The Dockerfile's text and its ARG defaults."""
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    return text, args


def test_dockerfile_base_image_matches_the_cuda_of_torch_and_pins_this_torch():
    import torch
    import torchvision

    text, args = dockerfile()
    (base,) = re.findall(r"^FROM (\S+)", text, flags=re.M)
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    repo, tag = image.rsplit(":", 1)

    assert args["TORCH_VERSION"] == torch.__version__.split("+")[0]
    assert args["TORCHVISION_VERSION"] == torchvision.__version__.split("+")[0]
    assert repo == "nvidia/cuda" and "cudnn-runtime" in tag
    if torch.version.cuda:  # a CUDA build of torch: the base image carries the same CUDA release
        assert tag.startswith(torch.version.cuda + "."), (tag, torch.version.cuda)
    assert "pypi.org" in args["TORCH_INDEX_URL"]  # PyPI's default Linux wheel is the CUDA build


def dockerignore_patterns() -> list[re.Pattern[str]]:
    lines = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = []
    for line in (ln.strip() for ln in lines):
        if not line or line.startswith("#"):
            continue
        rx = re.escape(line).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append(re.compile(rx))
    return patterns


def ignored(rel: str, patterns: list[re.Pattern[str]]) -> bool:
    parts = rel.split("/")
    return any(p.fullmatch("/".join(parts[:k])) for p in patterns for k in range(1, len(parts) + 1))


def test_dockerfile_copies_what_pip_needs_and_the_ignore_file_keeps_the_rest_out():
    text, _ = dockerfile()
    patterns = dockerignore_patterns()
    sources = [src for line in re.findall(r"^COPY (.+)$", text, flags=re.M) for src in line.split()[:-1]]

    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not ignored(src, patterns), f"COPY {src} is excluded by Dockerfile.dockerignore"
    installed = re.search(r'pip install "\.\[export\]" (.+?) \\', text).group(1).split()
    assert sorted(installed) == sorted(f"./{p.parent.relative_to(ROOT)}" for p in ROOT.glob("plugins/*/pyproject.toml"))
    needed = [p for d in ["core", *[i[2:] for i in installed]] for p in (ROOT / d).rglob("*.py")
              if "tests" not in p.relative_to(ROOT).parts and "__pycache__" not in p.parts]
    assert needed and not [p for p in needed if ignored(p.relative_to(ROOT).as_posix(), patterns)]
    for kept_out in (".venv/bin/python", ".git/HEAD", "runs/x/report.json", "plugins/text/tests/test_x.py",
                     "core/privet/__pycache__/cli.cpython-311.pyc"):
        assert ignored(kept_out, patterns), kept_out
