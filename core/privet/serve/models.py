"""The served models: export bundles loaded through ``privet predict``'s own code.

Records go through the bundle's saved cleaners and the model's ``encode_inputs``, then
the artifact (an ONNX Runtime session by default) and ``Model.postprocess`` via
``predict_batch``: the same records in give the same outputs as ``privet predict``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import attrs

from ..errors import UsageError
from ..export.bundle import Bundle
from ..export.predict import Predictor, bundle_cipher
from ..storage import Storage

log = logging.getLogger("privet.serve")

#: A model name as it appears in ``/v1/models/{name}:predict``.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RecordErrors(Exception):
    """Records of one request that cannot be predicted: ``[{index, error, detail?}]``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} unusable record(s)")
        self.errors = errors


@attrs.define
class ServedModel:
    """One bundle ready to serve: its name, the digest that identifies it, its predictor."""

    name: str
    folder: Path
    predictor: Predictor
    bundle_sha256: str

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model."""
        meta = self.predictor.bundle.meta
        return {"name": self.name, "model": meta["model"].get("name"), "task": meta.get("task"),
                "artifact": self.predictor.artifact, "inputs": meta.get("inputs"),
                "outputs": meta.get("outputs"), "bundle_sha256": self.bundle_sha256}

    def tune_for_serving(self, *, intra_op_threads: int) -> bool:
        """Reopen an ONNX artifact with serving session options; False when it is not one.

        ONNX Runtime's defaults suit one caller with big batches: a pool of intra-op
        threads per session that spin after every call. A server calls it from several
        threads at once with small batches, where those threads only burn the CPU the
        requests need (measured: 0.18 -> 0.07 ms of CPU per one-record call).
        """
        session = _serving_session(self.predictor, intra_op_threads)
        if session is None:
            return False
        self.predictor.run = _session_runner(session)
        return True

    @property
    def batch_limit(self) -> int:
        return self.predictor.batch_size

    def run_jobs(self, jobs: list[list[Any]]) -> list[list[dict[str, Any]] | RecordErrors]:
        """Predict several requests' records in shared batches (called in a worker thread).

        A request with an unusable record gets :class:`RecordErrors` naming every such
        record's index and is left out of the batch; the others are predicted together.
        """
        if self.predictor.windowed:  # series models build examples from whole requests
            return [self._windowed(records) for records in jobs]
        outcomes: list[Any] = []
        ready: list[Any] = []
        for records in jobs:
            pending = [self.predictor.prepare(f"record {i}", r) for i, r in enumerate(records)]
            bad = [_record_error(i, p.entry) for i, p in enumerate(pending) if p.entry is not None]
            outcomes.append(RecordErrors(bad) if bad else pending)
            if not bad:
                ready.extend(pending)
        for start in range(0, len(ready), self.batch_limit):
            self._predict(ready[start:start + self.batch_limit])
        return [o if isinstance(o, RecordErrors) else _answer(o) for o in outcomes]

    def _predict(self, batch: list[Any]) -> None:
        """Fill each pending's entry; a failing batch is retried record by record."""
        records, items = [p.record for p in batch], [p.item for p in batch]
        static = self.predictor.static_batch
        if static and len(batch) < static:  # an artifact exported with a fixed batch size
            records += [records[-1]] * (static - len(batch))
            items += [items[-1]] * (static - len(batch))
        try:
            results = self.predictor.model.predict_batch(self.predictor.run, records, items)
        except Exception as err:
            if len(batch) > 1:
                for p in batch:
                    self._predict([p])
                return
            log.warning("model %s: a record failed alone: %s", self.name,
                        (str(err).splitlines() or [type(err).__name__])[0][:200])
            batch[0].entry = {"error": "prediction_failed"}  # no internals in a response
            return
        for p, result in zip(batch, results):
            p.entry = dict(result)

    def _windowed(self, records: list[Any]) -> list[dict[str, Any]] | RecordErrors:
        located = ((f"record {i}", r) for i, r in enumerate(records))
        entries = list(self.predictor.predict(located))
        bad = [_record_error(int(e["location"].split()[-1]), e) for e in entries
               if "error" in e and str(e.get("location", "")).startswith("record ")]
        if bad:
            return RecordErrors(bad)
        return [{k: v for k, v in e.items() if k != "location"} for e in entries]


def _serving_session(predictor: Predictor, intra_op_threads: int) -> Any:
    """A new ONNX Runtime session over the predictor's artifact, with options for serving:
    ``intra_op_threads`` (0: one per core) that sleep when idle, nodes run in sequence.
    The artifact's bytes are read again through the bundle (decrypted if sealed) and must
    match the checksum the bundle recorded; None when it is not a one-file ONNX artifact."""
    session = getattr(predictor.run, "session", None)
    if not type(session).__module__.startswith("onnxruntime"):  # not an ONNX Runtime runner
        return None
    info = predictor.bundle.meta["artifacts"][predictor.artifact]
    if info.get("external_data") or not info.get("sha256"):
        return None  # keep the checked session as it is
    data = predictor.bundle.storage.read_bytes(info["file"])
    if hashlib.sha256(data).hexdigest() != info["sha256"]:  # swapped since it was loaded
        raise UsageError(f"{predictor.bundle.folder / info['file']}: the artifact changed while "
                         f"loading; copy the export folder again")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, intra_op_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, options, providers=session.get_providers())
    except Exception as err:  # the default session works: serve with it rather than not at all
        log.warning("%s: keeping ONNX Runtime's default session options (%s)", info["file"],
                    (str(err).splitlines() or [type(err).__name__])[0][:200])
        return None


def _session_runner(session: Any) -> Any:
    """``run(inputs) -> outputs`` over ``session``, as the ONNX exporter's runner maps them."""
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, Any]) -> list[Any]:
        feed = dict(inputs) if set(inputs) == set(names) else dict(zip(names, inputs.values()))
        return session.run(None, feed)

    run.session = session  # type: ignore[attr-defined]
    return run


def _answer(pending: list[Any]) -> list[dict[str, Any]] | RecordErrors:
    """A request's entries; a record the artifact refused alone (its shape is wrong: the
    others of its batch ran) makes the request a :class:`RecordErrors`."""
    failed = [{"index": i, "error": p.entry["error"]} for i, p in enumerate(pending) if "error" in p.entry]
    return RecordErrors(failed) if failed else [_entry(i, p) for i, p in enumerate(pending)]


def _record_error(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    out = {"index": index, "error": entry.get("error", "unusable_record")}
    if entry.get("detail"):
        out["detail"] = entry["detail"]
    return out


def _entry(index: int, pending: Any) -> dict[str, Any]:
    record = pending.record
    ident = {"id": record["id"]} if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) else {}
    return {"index": index, **ident, **pending.entry}


def parse_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` or ``PATH``: the served name (None: the run's name) and the folder."""
    name, sep, path = spec.partition("=")
    if sep and NAME.fullmatch(name) and not Path(spec).exists():
        return name, path
    return None, spec


def load_models(specs: list[str], host: Any, *, key: str | None = None,
                 verify_key: str | None = None, artifact: str | None = None,
                 trust_code: bool = False, batch_size: int = 64) -> dict[str, ServedModel]:
    """Open every bundle (signature checked first with ``verify_key``; sealed ones with
    ``key``) and build its predictor, refusing duplicate or unusable names."""
    from ..signing import verify_bundle

    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = parse_spec(spec)
        folder = Bundle.locate(path)
        if verify_key:  # before anything in the bundle, even its key reference, is used
            verify_bundle(folder, verify_key)
        bundle = Bundle.open(folder, cipher=bundle_cipher(folder, host, key))
        name = name or str((bundle.meta.get("run") or {}).get("name") or folder.parent.name)
        if not NAME.fullmatch(name):
            raise UsageError(f"{path}: model name {name!r} is not usable in a URL; serve it as "
                             f"NAME={path}")
        if name in models:
            raise UsageError(f"two bundles are named {name!r}; serve one as OTHER={path}")
        predictor = Predictor(bundle, host, artifact=artifact, trust_code=trust_code,
                              batch_size=batch_size)
        digest = hashlib.sha256(Storage(folder, cipher=None).read_bytes("bundle.json")).hexdigest()
        models[name] = ServedModel(name, folder, predictor, digest)
    return models
