"""The project's own error types: each one's message names where the problem is and how to fix it.

The CLI prints these as one message with a non-zero exit instead of a traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class TutorTuneError(Exception):
    """Base class: a problem the user can fix from the message alone (file, line or key, and the fix)."""


class ConfigurationError(TutorTuneError, ValueError):
    """A configuration value that cannot work here (wrong combination, unavailable backend, bad path)."""


class ModelSourceError(TutorTuneError, OSError):
    """A model, tokenizer or adapter that cannot be found or read from the configured source."""


class MemoryPlanError(TutorTuneError, RuntimeError):
    """The estimated peak memory of a run exceeds what the device has free."""
