"""The test suites and their shared helpers. A package, so that the helpers
import as `tests.labkit` and `tests.prom_text` from the repository root, in
pytest and in `python -m bench.<name>` alike."""
