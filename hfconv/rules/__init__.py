"""Expected tensor shapes: what config.json implies the weights hold.

- :mod:`.expression`: the whitelisted shape-expression evaluator (``Scope``, ``parse_expression``);
- :mod:`.families`: the rule tables, one per ``model_type`` (``FAMILIES``);
- :mod:`.expected`: expected models from the tables or from the stored names (``expected_tensors``,
  ``generic_expected``, ``infer_counts``);
- :mod:`.compare`: expected vs stored (``compare``), and the likely culprit (``suggest_fix``);
- :mod:`.transformers_reference`: the expected model built by transformers itself on the meta
  device (imported lazily, only where transformers is installed).

Import from the submodules; this package imports nothing.
"""
