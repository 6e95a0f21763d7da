"""privet-text: the text modality for Privet.

Components (registered by :mod:`privet_text.plugin`): sources ``text.jsonl``, ``text.csv``,
``text.files``; cleaners ``text.strip_html``, ``text.normalize``, ``text.redact_pii``,
``text.dedupe``, ``text.length_filter``, ``text.language_filter``; augmenters
``text.synonym``, ``text.random_insertion``, ``text.random_swap``, ``text.random_deletion``,
``text.back_translation``; models ``text.gpt`` (which ``privet generate`` and the
``Model.generate`` capability sample from) and ``text.classifier``.
"""

__version__ = "0.1.0"
