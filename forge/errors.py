"""Errors a user can fix: shown as one line each (``file:line:col: place: problem — fix``), exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input or usage. Carries one or more self-contained, one-line messages."""

    def __init__(self, messages: str | list[str]):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))
