"""Runnable examples (importable from the repository root, e.g. ``examples.catalogue.app``)."""
