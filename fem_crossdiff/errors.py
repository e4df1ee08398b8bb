"""Errors that carry their data: the parameter, the value and what is allowed.

A :class:`ParameterError` is raised by every parameter check of the library (dataclasses,
models, mesh checks). Callers map ``key`` to their own names (the CLI to dotted TOML keys)
without reading the message text. Needs nothing but the standard library.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ParameterError", "show_value", "species_name"]


def species_name(k: int) -> str:
    """Species ``k`` (a 0-based index) as users read it: ``"species 1"`` for ``k = 0``.

    Species are numbered from 1 in every message, CSV column and plot; keys such as
    ``initial[0]`` stay array indices.
    """
    return f"species {k + 1}"


def show_value(value: Any) -> str:
    """A short ``repr`` of ``value`` for messages (long values are cut)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ParameterError(ValueError):
    """A parameter with a value outside what is allowed.

    Attributes:
        key: The parameter's name as the API spells it (``"eps"``, ``"a[1]"``,
            ``"initial[0]"``).
        value: The offending value.
        allowed: What is allowed, in words (``"a number > 0"``).
    """

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {show_value(value)}: {allowed}")

    def __reduce__(self):
        return (type(self), (self.key, self.value, self.allowed))

    def with_key(self, key: str) -> ParameterError:
        """The same error under another name (for example a dotted TOML key)."""
        return type(self)(key, self.value, self.allowed)
