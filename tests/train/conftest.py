"""The trainer tests' shared fixtures (``tiny_model_dir``, ``fast``) live in tests/conftest.py, which the
inspector's end-to-end tests use too."""
