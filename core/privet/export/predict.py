"""``privet predict``: raw records -> saved preprocessing -> an exported artifact -> JSONL.

Per input record, in input order, one output line: the model's prediction
(:meth:`privet.Model.postprocess`), or an error entry naming the record's location and
why it could not be predicted. A bad record never stops the others.

A bundle is untrusted input: its components come only from plugins installed here, and
artifacts that are programs (TorchScript, ``torch.export``) run only with ``trust_code``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterator

import attrs

from ..components import BadRecord, Record
from ..errors import DropRecord, ExportError, PrivetError
from .bundle import Bundle
from .exporters import _first_line

#: Exceptions a model or cleaner raises for a record it cannot handle (a missing field).
RECORD_ERRORS = (DropRecord, KeyError, ValueError, TypeError, IndexError)


@attrs.define
class PredictSummary:
    """What a prediction pass did: counts, errors by reason, the artifact used."""

    artifact: str
    predicted: int = 0
    errors: Counter = attrs.field(factory=Counter)

    @property
    def total(self) -> int:
        return self.predicted + sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "predicted": self.predicted,
                "errors": dict(self.errors), "total": self.total}


@attrs.define
class _Pending:
    """One output line in input order, filled when its batch has run."""

    location: str
    record: Record | None = None
    item: Any = None
    entry: dict[str, Any] | None = None


class Predictor:
    """A loaded bundle ready to predict: model, cleaners and one artifact's runner."""

    def __init__(self, bundle: Bundle, host: Any, *, artifact: str | None = None,
                 batch_size: int = 64, trust_code: bool = False) -> None:
        self.bundle = bundle
        # refuse before building anything: no code artifact without trust, no missing plugin
        self.artifact = bundle.choose(artifact, trust_code=trust_code, host=host)
        bundle.check_plugins(host)
        self.model = bundle.load_model(host)
        cleaners = bundle.load_cleaners(host)
        # Cleaners that only make sense on training data (dedupe, label filters) opt out.
        self.cleaners = [c for c in cleaners if getattr(c, "applies_at_inference", True)]
        self.run = bundle.runner(self.artifact, host, self.model, trust_code=trust_code)
        info = bundle.meta["artifacts"][self.artifact]
        # an artifact exported with static shapes takes only its example batch size
        self.static_batch = None if info.get("dynamic", True) else int(info.get("example_batch", 1))
        self.batch_size = self.static_batch or max(1, batch_size)

    @classmethod
    def open(cls, folder: str | Path, host: Any, *, key: str | None = None,
             verify_key: str | Path | None = None, **options: Any) -> "Predictor":
        """A Predictor over the bundle in ``folder``: sealed bundles opened with ``key`` (a
        key reference, ``env:``/``file:``/``command:``) or the bundle's own reference;
        ``verify_key`` checks its signature first. ``options`` go to the constructor."""
        if verify_key is not None:  # before anything in the bundle is trusted
            from ..signing import verify_bundle

            verify_bundle(Bundle.locate(folder), verify_key)
        bundle = Bundle.open(folder, cipher=bundle_cipher(folder, host, key))
        return cls(bundle, host, **options)

    def clean(self, location: str, item: Record | BadRecord) -> _Pending:
        """Apply the fitted cleaners to one raw record; failures become an error entry."""
        if isinstance(item, BadRecord):
            return _Pending(location, entry=_error(location, item.reason, item.detail))
        record: Record = dict(item)
        for cleaner in self.cleaners:
            try:
                out = cleaner.clean(record)
            except RECORD_ERRORS as err:
                return _Pending(location, entry=_failure(location, err, item))
            if out is None:
                return _Pending(location, entry=_error(location, f"filtered_by_{cleaner.name}", "", item))
            record = out
        return _Pending(location, record=record)

    def encode(self, pending: _Pending) -> _Pending:
        try:
            pending.item = self.model.encode_inputs(pending.record)
        except RECORD_ERRORS as err:
            pending.entry = _failure(pending.location, err, pending.record)
        return pending

    def prepare(self, location: str, item: Record | BadRecord) -> _Pending:
        """Clean and encode one raw record; failures become an error entry."""
        pending = self.clean(location, item)
        return pending if pending.entry is not None else self.encode(pending)

    @property
    def windowed(self) -> bool:
        """Models that build examples from many records (series windows) predict per example."""
        return bool(getattr(self.model, "examples_at_inference", False))

    def _run_batch(self, batch: list[_Pending]) -> None:
        """Predict a batch; if it fails as a whole, retry record by record to isolate it."""
        try:
            results = self._predict([p.record for p in batch], [p.item for p in batch])
        except PrivetError:
            raise
        except Exception as err:
            if len(batch) > 1:
                for p in batch:
                    self._run_batch([p])
                return
            batch[0].entry = _error(batch[0].location, "prediction_failed",
                                    f"{type(err).__name__}: {_first_line(err)}", batch[0].record)
            return
        if len(results) != len(batch):
            raise ExportError(f"model {self.model.name!r}: predict_batch() returned {len(results)} "
                              f"results for {len(batch)} records; it must return one per record")
        for p, result in zip(batch, results):
            p.entry = {"location": p.location, **_id_of(p.record), **result}

    def _predict(self, records: list[Record], items: list[Any]) -> list[dict[str, Any]]:
        n = len(items)
        if self.static_batch and n < self.static_batch:  # pad to the exported batch size
            pad = self.static_batch - n
            records = records + [records[-1]] * pad
            items = items + [items[-1]] * pad
        return self.model.predict_batch(self.run, records, items)[:n]

    def predict(self, located: Iterator[tuple[str, Record | BadRecord]]) -> Iterator[dict[str, Any]]:
        """Output entries, in input order, for ``(location, record)`` pairs."""
        if self.windowed:
            yield from self._predict_examples(located)
            return
        window: list[_Pending] = []
        ready: list[_Pending] = []
        for k, pair in enumerate(located, start=1):
            location, item = pair if isinstance(pair, tuple) else (f"record {k}", pair)
            pending = self.prepare(location, item)
            window.append(pending)
            if pending.entry is None:
                ready.append(pending)
            if len(ready) >= self.batch_size:
                self._run_batch(ready)
                ready = []
            if not ready:  # everything in the window is known: write it out
                yield from (p.entry for p in window)  # type: ignore[misc]
                window = []
        if ready:
            self._run_batch(ready)
        yield from (p.entry for p in window)  # type: ignore[misc]

    def _predict_examples(self, located: Iterator[tuple[str, Record | BadRecord]]) -> Iterator[dict[str, Any]]:
        """Clean every record, let the model build its ``predict`` examples, predict those.

        Error entries for unusable records come first, then one entry per example.
        """
        kept: list[Record] = []
        for k, pair in enumerate(located, start=1):
            location, item = pair if isinstance(pair, tuple) else (f"record {k}", pair)
            pending = self.clean(location, item)
            if pending.entry is not None:
                yield pending.entry
            else:
                kept.append(pending.record)  # type: ignore[arg-type]
        batch: list[_Pending] = []
        done: list[_Pending] = []
        for i, example in enumerate(self.model.examples(kept, "predict"), start=1):
            pending = self.encode(_Pending(f"example {i}", record=example))
            done.append(pending)
            if pending.entry is None:
                batch.append(pending)
            if len(batch) >= self.batch_size:
                self._run_batch(batch)
                batch = []
        if batch:
            self._run_batch(batch)
        yield from (p.entry for p in done)  # type: ignore[misc]


def _id_of(record: Record | None) -> dict[str, Any]:
    if isinstance(record, dict) and "id" in record and isinstance(record["id"], (str, int)):
        return {"id": record["id"]}
    return {}


def _error(location: str, reason: str, detail: str = "", record: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"location": location, **_id_of(record), "error": reason}
    if detail:
        entry["detail"] = detail
    return entry


def _failure(location: str, err: Exception, record: Any) -> dict[str, Any]:
    if isinstance(err, DropRecord):
        return _error(location, err.reason, err.detail, record)
    if isinstance(err, KeyError):
        return _error(location, "missing_field", f"no field {err.args[0]!r}" if err.args else "", record)
    return _error(location, "unusable_record", f"{type(err).__name__}: {_first_line(err)}", record)


#: Key providers a bundle's own reference may use: reading a variable or a file runs nothing.
_BUNDLE_PROVIDERS = ("env", "file")


def bundle_cipher(folder: str | Path, host: Any, key: str | None = None) -> Any:
    """The cipher that opens a sealed bundle: from ``key`` (a key reference given by the
    user), else from the reference the bundle's plain ``report.json`` records; None for
    a plaintext bundle without ``key``. The key itself is never stored in a bundle."""
    from ..crypto import Cipher, KeyMissingError, is_encrypted, load_key

    if key:
        return Cipher(load_key(key, host.catalog, Path.cwd(), where="--key"))
    folder = Bundle.locate(folder)
    if not is_encrypted((folder / "bundle.json").read_bytes()[:16]):
        return None
    try:
        reference = json.loads((folder / "report.json").read_text()).get("encryption") or {}
    except (OSError, ValueError, AttributeError):
        reference = {}
    if not isinstance(reference, dict) or not isinstance(reference.get("key"), str):
        return None  # reading bundle.json then says "key missing"
    where = f"{folder / 'report.json'}: encryption.key"
    provider = reference["key"].partition(":")[0]
    if provider not in _BUNDLE_PROVIDERS:  # a bundle is untrusted: it never runs a command
        raise KeyMissingError(f"{where}: key missing: the bundle names a {provider!r} key "
                              f"reference, which predict follows only when given as --key")
    return Cipher(load_key(reference["key"], host.catalog, Path(str(reference.get("base_dir") or folder)),
                           where=where))


def predict_path(bundle_dir: str | Path, input_path: str | Path, out: IO[str] | None = None, *,
                 host: Any, artifact: str | None = None, batch_size: int = 64,
                 trust_code: bool = False, cipher: Any = None,
                 verify_key: str | Path | None = None) -> PredictSummary:
    """Predict every record of ``input_path`` with the bundle; write JSONL to ``out``.

    ``trust_code`` allows artifacts that are programs (TorchScript, ``torch.export``);
    without it only data artifacts (ONNX, int8 safetensors) are run. ``cipher`` opens a
    sealed bundle (see :func:`bundle_cipher`); ``verify_key`` checks its signature.
    """
    out = out if out is not None else sys.stdout
    bundle = Bundle.open(bundle_dir, cipher=cipher, verify_key=verify_key)
    predictor = Predictor(bundle, host, artifact=artifact, batch_size=batch_size,
                          trust_code=trust_code)
    summary = PredictSummary(predictor.artifact)
    if predictor.windowed:  # whole series, read as the run read its data
        located = bundle.read_with_source(host, Path(input_path))
    else:
        located = predictor.model.read_inputs(Path(input_path))
    for entry in predictor.predict(iter(located)):
        if "error" in entry:
            summary.errors[entry["error"]] += 1
        else:
            summary.predicted += 1
        out.write(json.dumps(entry, ensure_ascii=False, default=_plain) + "\n")
    if summary.total == 0:
        raise ExportError(f"{input_path}: no records to predict")
    return summary


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a model's results, as JSON values."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable; postprocess() must "
                    f"return plain data")
