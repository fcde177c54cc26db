"""Domain errors. Logic raises these; only the CLI edge turns them into one line and an exit code.

Exit codes: 2 for usage and configuration errors, 1 for data and runtime errors, 130 on Ctrl-C.
"""

from __future__ import annotations


class FtError(Exception):
    """Base of ft's errors. ``str(err)`` is the one line the user sees."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(FtError):
    """A bad option, config file, environment variable or persona file."""

    exit_code = 2


class DataError(FtError):
    """Bad input data. Carries the file and line so the message names them."""

    exit_code = 1

    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None,
                 hint: str | None = None):
        self.path = path
        self.line = line
        self.reason = reason
        where = path or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}", hint=hint)


class ProviderError(FtError):
    """An LLM provider failed in a way that retrying will not fix (auth, bad model, ...)."""

    exit_code = 1


class TrainingError(FtError):
    """Training cannot start or cannot go on (a template that masks every label, ...)."""

    exit_code = 1


class ExportError(FtError):
    """An export failed or did not verify (merged logits differ, a broken quantization, ...)."""

    exit_code = 1


class GateFailed(FtError):
    """An evaluation gate (``--fail-if``) did not hold."""

    exit_code = 1
