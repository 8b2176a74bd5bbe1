"""Errors that end a command with one line on stderr instead of a traceback.

Every error a user can cause (a bad model folder, a bad plan, a value out of range, a
backend that is not installed) is raised as one of these; the CLI prints its message on one
line and exits with `exit_code` (2). A check that runs and fails (validate) exits 1 itself.
Anything else is a bug in moe-compile and keeps its traceback.
"""


class MoeCompileError(Exception):
    """Base class; the message must say what is wrong and, where it helps, what to do."""

    exit_code = 2


class InvalidInput(MoeCompileError):
    """The model, a file or a command-line value is malformed or out of range."""


class BackendUnavailable(MoeCompileError):
    """A backend (TensorRT, a GPU, ONNX Runtime) the command needs is not installed."""


class NotEnoughMemory(MoeCompileError):
    """What the command must hold in memory is more than this machine has available now."""


def one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line (for wrapping third-party errors)."""
    return " ".join(str(exc).split()) or exc.__class__.__name__
