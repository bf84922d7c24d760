"""Fixtures of the deploy tests: the session's shapes dataset (shared with the engine tests)."""
from tests.engine._train_utils import one_thread, shapes_root  # noqa: F401  (fixtures)
