"""Benchmark harness: suites of models x datasets x seeds trained and tested through anomalib's ``Engine``.

``proxyano-bench run SUITE`` appends one JSON record per run to ``<output>/records.jsonl`` the moment the run
ends; ``proxyano-bench report DIR`` turns the records into ``report.md``, ``summary.csv`` and plots. Modules:
``suite`` (YAML schema and validation), ``runner`` (scheduling, records, resume), ``worker`` (one run),
``metrics`` (anomalib metrics on raw scores), ``report`` and ``cli``.
"""
