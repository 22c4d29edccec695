"""ConfigError, in a module of its own so that the registries' modules (algos.py, tasks.py) can raise
it without importing config.py, which looks them up (config.selector_registry)."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A user mistake in a config override; the message is one line naming the field and the fix."""
