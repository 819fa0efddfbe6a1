"""Errors that reach the user as one line and an exit code.

Every error the CLI can expect is an :class:`OnnxPruneError`; the CLI prints
``onnxprune: error: <message>`` on stderr and exits with ``exit_code``.
Anything else is a bug and exits 1 (with the traceback under ``-v``).

Exit codes (documented in the README):

=====  ==========================================================
0      success
1      internal error (a bug, a pass crashing included: please report it, rerun with -v)
2      usage: unknown pass or option, value out of range, bad flag
3      input model: missing, unreadable, not ONNX, truncated, invalid
4      data: calibration/validation data missing or not matching the model
5      verification: a pass produced a graph that breaks an invariant
6      unsupported: the model uses something onnxprune or onnxruntime cannot handle
       (a custom-domain op, an IR version newer than onnxruntime's, control flow a
       pass cannot rewrite)
7      quality gate: the compressed model fell below --max-drop / --min-fidelity
       (nothing written)
=====  ==========================================================
"""
from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class: an expected failure with a one-line message."""

    exit_code = 1


class UsageError(OnnxPruneError, ValueError):
    """Bad command line or options: unknown pass/key, value out of range."""

    exit_code = 2


class ModelError(OnnxPruneError):
    """The input model cannot be read or is not a valid ONNX model."""

    exit_code = 3


class DataError(OnnxPruneError):
    """Input data is missing, unreadable or does not match the model's inputs."""

    exit_code = 4


class VerificationError(OnnxPruneError):
    """A pass broke a graph invariant; nothing is written."""

    exit_code = 5


class UnsupportedError(OnnxPruneError):
    """The model uses an op or feature onnxprune cannot handle."""

    exit_code = 6


class QualityError(OnnxPruneError):
    """The compressed model misses the quality gate the user set; nothing is written."""

    exit_code = 7


class PassCrash(OnnxPruneError):
    """A pass raised an unexpected exception: a bug in that pass (exit 1), not a broken graph.

    The CLI turns it into :class:`UnsupportedError` when the model holds a construct the
    pass is known not to handle (control-flow subgraphs).
    """

    exit_code = 1

    def __init__(self, message: str, pass_name: str = "") -> None:
        super().__init__(message)
        self.pass_name = pass_name


#: exit code -> meaning, as the README and ``--help`` list them (a test keeps them in step).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error: a bug (a pass crashing included); rerun with -v for the traceback",
    2: "usage: unknown pass or option, value out of range (nan included), bad flag, unwritable output folder",
    3: "input model missing, unreadable, not ONNX, truncated or invalid",
    4: "data missing, unreadable, holding NaN, or not matching the model's inputs",
    5: "verification failed: a pass really broke the graph (nothing written)",
    6: "unsupported model: custom-domain op, IR version newer than onnxruntime's, control flow a pass cannot handle",
    7: "quality gate: --max-drop / --min-fidelity missed (nothing written)",
}
