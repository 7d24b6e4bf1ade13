"""The benchmark smoke tests' fixtures: the ones every script test shares, defined in tests/scripts_helpers.py."""

from scripts_helpers import in_repo, one_torch_thread, tiny_data, tiny_master

__all__ = ["in_repo", "one_torch_thread", "tiny_data", "tiny_master"]
