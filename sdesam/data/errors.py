"""Exceptions raised by the dataset loaders.

Every message names the file (or the directories searched) and what is wrong, so that a
user can fix the data without reading the loader's source.
"""
from __future__ import annotations

import os
import pickle


class DatasetNotFoundError(FileNotFoundError):
    """No usable copy of a dataset was found (and none could be obtained).

    Attributes:
        dataset: the dataset's name, e.g. ``"mnist"``.
        searched: the paths that were looked at, in search order.

    ``notes`` (e.g. the incomplete file sets ``find_complete_set`` reports) are listed
    before ``advice``.
    """

    def __init__(self, dataset: str, searched, advice: str, notes=()):
        self.dataset = dataset
        self.searched = [os.fspath(p) for p in searched]
        where = "\n".join(f"  - {p}" for p in self.searched)
        advice = "\n".join([f"  ({note})" for note in notes] + [advice])
        super().__init__(f"{dataset}: no usable copy found. Searched:\n{where}\n{advice}")


class CorruptDatasetError(ValueError):
    """A dataset file exists but is truncated, malformed or fails its checksum.

    Attributes:
        path: the offending file (for an archive member, ``"archive:member"``).
        problem: what is wrong with it.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the restricted unpickler does not allow.

    Attributes:
        module, name: the refused global (e.g. ``"posix"``, ``"system"``).
        source: the file the pickle came from.
    """

    def __init__(self, module: str, name: str, source: str):
        self.module = module
        self.name = name
        self.source = source
        super().__init__(
            f"{source}: refused to load global {module}.{name} from a pickle; only numpy "
            "array reconstruction and plain containers are allowed (the file is not a "
            "genuine dataset pickle, or it is malicious)"
        )
