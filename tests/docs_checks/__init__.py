"""Checks of docs/examples DAGs, one module per operator family (see tests/test_docs_examples.py)."""
