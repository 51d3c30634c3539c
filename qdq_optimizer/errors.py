"""Error types that map to qdqopt's documented exit codes.

Library code raises these; the CLI turns them into a one-line message and the exit code, so a
user never sees a traceback for bad input (``--debug`` shows it).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class QdqoptError(Exception):
    """Base class: a failure with a clear one-line message and an exit code."""

    exit_code = EXIT_BAD_INPUT

    def __str__(self) -> str:
        # One line whatever the message quotes (node names from a hostile model may hold newlines).
        return " ".join(super().__str__().split())


class InputError(QdqoptError):
    """The input (file, model, report, rule set, checkpoint) is unreadable or unsupported."""

    exit_code = EXIT_BAD_INPUT


class UsageError(QdqoptError):
    """The command line asks for something impossible (e.g. output path equal to input)."""

    exit_code = EXIT_BAD_INPUT


class RuleSetError(InputError):
    """A rule file is invalid: unknown action or field, bad regex, extends cycle."""


class MissingDependencyError(QdqoptError):
    """An optional extra (tensorrt, torch, graphviz) is needed but not installed."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(QdqoptError):
    """A check found problems (lint, diff, inspect --expect): exit 1, not an error in the tool."""

    exit_code = EXIT_CHECK_FAILED
