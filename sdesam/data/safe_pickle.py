"""A restricted unpickler for dataset pickles (MNIST ``mnist.pkl.gz``, CIFAR batches).

``pickle`` can run arbitrary code while loading (any global callable can be named and
called through ``REDUCE``), so dataset pickles are never opened with the default
unpickler. :class:`RestrictedUnpickler` resolves only these globals:

- numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` (written by
  numpy 1.x and Python 2), ``numpy._core.multiarray._reconstruct`` (numpy 2.x),
  ``numpy.ndarray``, ``numpy.dtype``, and ``numpy.{core,_core}.numeric._frombuffer``
  (numpy's protocol-5 array form);
- plain containers: ``set``, ``frozenset``, ``bytes``, ``bytearray`` (under the Python-2
  name ``__builtin__`` too), and ``_codecs.encode`` restricted to latin-1 (how Python 3
  writes ``bytes`` at protocol 2).

Any other global raises :class:`UnsafePickleError`, naming it, before anything is called.
Dicts, lists, tuples, strings, numbers and booleans need no global and always load.

Python-2 pickles: pass ``encoding="latin1"`` when the pickle holds numpy arrays and text
(MNIST), or ``encoding="bytes"`` to keep Python-2 ``str`` as ``bytes`` (CIFAR batches,
whose dict keys are then ``b"data"``, ``b"labels"``).
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from .errors import CorruptDatasetError, UnsafePickleError

__all__ = ["RestrictedUnpickler", "safe_loads"]

_probe = np.zeros(1)
_RECONSTRUCT = _probe.__reduce__()[0]  # numpy's _reconstruct, whatever module holds it
_FROMBUFFER = _probe.__reduce_ex__(5)[0]  # numpy's _frombuffer (protocol 5)
del _probe


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` limited to what a protocol-2 ``bytes`` needs: ``str`` → latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode is allowed only as encode(str, 'latin1'), got encoding={encoding!r}"
        )
    return text.encode("latin-1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in ("builtins", "__builtin__"):
    for _type in (set, frozenset, bytes, bytearray):
        _ALLOWED[(_module, _type.__name__)] = _type
del _module, _type


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals listed in the module docstring.

    Args:
        file: a binary file object.
        source: the file name, used in error messages.
        encoding: how to decode Python-2 ``str`` (``"latin1"``, ``"bytes"``, ...).
    """

    def __init__(self, file, *, source: str = "<pickle>", encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name, self.source) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(
            f"{self.source}: persistent ids are not allowed in a dataset pickle"
        )


def safe_loads(data: bytes, *, source: str = "<pickle>", encoding: str = "ASCII"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` and return the object.

    Raises:
        UnsafePickleError: the pickle names a global outside the allowed set.
        CorruptDatasetError: the bytes are not a complete, well-formed pickle (truncated,
            garbage, or a numpy array whose state does not match its shape).
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # a malformed pickle can fail in many ways; report them as one
        raise CorruptDatasetError(
            source, f"not a readable pickle ({type(exc).__name__}: {exc})"
        ) from exc
