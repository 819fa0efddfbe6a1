"""Errors that reach the user as one line and an exit code.

Every error the CLI can expect is an :class:`OnnxPruneError`; the CLI prints
``onnxprune: error: <message>`` on stderr and exits with ``exit_code``.
Anything else is a bug and exits 1 (with the traceback under ``-v``).

Exit codes (documented in the README):

=====  ==========================================================
0      success
1      internal error (a bug: please report it, rerun with -v)
2      usage: unknown pass or option, value out of range, bad flag
3      input model: missing, unreadable, not ONNX, truncated, invalid
4      data: calibration/validation data missing or not matching the model
5      verification: a pass produced a graph that breaks an invariant
6      unsupported: the model uses something onnxprune cannot handle
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
