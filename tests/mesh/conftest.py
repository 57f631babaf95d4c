"""Tests of the whole mesh use the ``mesh`` and ``mesh_database`` fixtures of tests/conftest.py."""
