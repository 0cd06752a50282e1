"""Exceptions raised by securetorch."""

from __future__ import annotations


class PartyError(RuntimeError):
    """A party is gone, silent past the timeout, or failed: the computation was abandoned.

    ``party_errors`` maps a rank to what that party reported (when it reported anything).
    """

    def __init__(self, message: str, party_errors: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.party_errors: dict[int, str] = dict(party_errors or {})


class ProtocolError(RuntimeError):
    """The parties fell out of step (a message arrived for the wrong protocol step)."""


class InputError(ValueError, TypeError):
    """An input a secure model or a party refuses: a keyword the model does not declare, a
    wrong dtype, shape or value, a one-hot matrix that fails the parties' check. It is both
    a ``ValueError`` and a ``TypeError``, so code catching either sees it."""


class AccessError(PermissionError):
    """A request this driver's role, or the model's list of clients, does not allow."""
