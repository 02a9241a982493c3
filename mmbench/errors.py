"""User-facing errors: one line saying what is wrong and how to fix it."""


class MMBenchError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


def brief(e: BaseException, width: int = 100) -> str:
    """An exception as one short line for a log or a table cell: its type and the first line of its message
    (which may be empty)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:width]}" if lines else type(e).__name__


class ConfigError(MMBenchError):
    """A config, suite or override is invalid. The message names the field and what is allowed."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)
