"""Safe outputs: tfafm never replaces what it did not create, and a crash never leaves a half-written output.

Every file or directory tfafm writes goes through a :class:`Destination`:

* **Refusal.** An existing destination is replaced only when it is an empty
  directory or a tfafm directory of the same kind (it holds a
  ``.tfafm-artifact.json`` marker naming its kind, e.g. ``"run"``). A file is
  replaced only where the caller allows it (``replace_files``: the library's
  :func:`atomic_path` does, like ``open(path, "w")``; the command line does
  only with ``--overwrite``, since a single file has no room for a marker
  saying who wrote it). ``overwrite=True`` lifts both rules. Never allowed,
  even with ``overwrite``: a destination that is, contains or lies inside one
  of the command's inputs (``sources``), or that contains the current
  directory.
* **Crash safety.** The output is written into a temporary folder beside the
  destination, then swapped in: on Linux with ``renameat2(RENAME_EXCHANGE)``,
  one atomic step, so at every instant the destination holds the complete old
  or the complete new output. Where that is unavailable a directory is
  replaced by two renames; the old one waits inside the temporary folder and
  is put back by the next tfafm run if a crash fell between them. The old
  output is deleted only after the swap.
* **Clean-up.** Temporary folders are named ``.NAME.tfafm-tmp-XXXX``, hold a
  ``.tfafm-temp.json`` marker and stay locked (``flock``) while their process
  lives. Creating a :class:`Destination` removes the folders of dead
  processes in the same parent directory (only marked ones, and empty ones
  more than a minute old), after putting back any output they were replacing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Iterator, Optional, Sequence

from tfafm.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: temporaries are never reclaimed there
    fcntl = None

ARTIFACT_MARKER = ".tfafm-artifact.json"
TEMP_MARKER = ".tfafm-temp.json"
TEMP_INFIX = ".tfafm-tmp-"
DIRECTORY_KINDS = frozenset({"run", "demo", "saved_model", "directory", "data-cache"})
_STAGED = "staged"
_PREVIOUS = "previous"
_EMPTY_TEMP_GRACE_S = 60.0
# errno values of a full disk or quota: only writing raises them, whichever file or library it was.
_OUT_OF_SPACE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)
)
# errno values of writes that fail for a reason the user can fix (permissions, names), when about the output.
_USER_FIXABLE_ERRNOS = _OUT_OF_SPACE_ERRNOS | frozenset(
    getattr(errno, name) for name in ("EACCES", "EPERM", "EROFS", "ENAMETOOLONG") if hasattr(errno, name)
)
_NAME_MAX = 255


# ----------------------------------------------------------------------------- atomic exchange


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(first: str, second: str) -> bool:
    """Atomically swaps two existing paths; False where the system or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), second)


# ----------------------------------------------------------------------------- markers


def artifact_kind(path: str) -> Optional[str]:
    """The kind recorded in a tfafm directory's marker, or None for anything else."""
    try:
        with open(os.path.join(path, ARTIFACT_MARKER)) as f:
            kind = json.load(f).get("tfafm_artifact")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def mark_artifact(directory: str, kind: str) -> None:
    """Writes the marker that lets later tfafm runs replace ``directory``."""
    with open(os.path.join(directory, ARTIFACT_MARKER), "w") as f:
        json.dump({"tfafm_artifact": kind}, f)


class _TempFolder:
    """A marked, locked temporary folder beside a destination."""

    def __init__(self, parent: str, name: str):
        self.path = tempfile.mkdtemp(prefix=f".{name[:80]}{TEMP_INFIX}", dir=parent)
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            with open(os.path.join(self.path, TEMP_MARKER), "w") as f:
                json.dump({"tfafm_temporary": True, "destination": name, "pid": os.getpid()}, f)
        except BaseException:  # an error or an interrupt before the caller holds the folder: not left behind
            shutil.rmtree(self.path, ignore_errors=True)
            if self._fd >= 0:
                os.close(self._fd)
            raise

    def remove(self) -> None:
        """Deletes the folder. An interrupt landing meanwhile (a second Ctrl-C) is raised once it is gone: cut
        short, the folder could have lost its marker and be kept by later runs as not tfafm's."""
        interrupted = None
        while True:
            try:
                shutil.rmtree(self.path, ignore_errors=True)
                break
            except Exception:
                raise
            except BaseException as error:  # an interrupt (Ctrl-C, SIGTERM): raised below, once the folder is gone
                interrupted = interrupted or error
        os.close(self._fd)
        if interrupted is not None:
            raise interrupted


def _temp_destination(path: str) -> Optional[str]:
    try:
        with open(os.path.join(path, TEMP_MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    name = marker.get("destination") if isinstance(marker, dict) and marker.get("tfafm_temporary") else None
    return name if isinstance(name, str) and name and os.sep not in name else None


def _reclaim(path: str) -> None:
    """Removes one temporary folder if its process is gone, restoring an output it held aside."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live process holds it
        name = _temp_destination(path)
        if name is None:
            with contextlib.suppress(OSError):
                if not os.listdir(path) and time.time() - os.stat(path).st_mtime > _EMPTY_TEMP_GRACE_S:
                    os.rmdir(path)  # created by a process killed before it could mark the folder
            return
        previous = os.path.join(path, _PREVIOUS)
        destination = os.path.join(os.path.dirname(path), name)
        if os.path.lexists(previous) and not os.path.lexists(destination):
            os.rename(previous, destination)  # a crash fell between the two renames of a replace
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str) -> None:
    """Reclaims the temporary folders of dead tfafm processes directly inside ``directory``."""
    if fcntl is None:
        return
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and TEMP_INFIX in entry.name and entry.is_dir(follow_symlinks=False):
            _reclaim(entry.path)


# ----------------------------------------------------------------------------- destinations


def _within(inner: str, outer: str) -> bool:
    """True when ``inner`` is ``outer`` or lies inside it (symbolic links resolved)."""
    inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _missing_ancestors(directory: str) -> list[str]:
    """``directory`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    return missing


def write_failure(error: BaseException, temporary: str) -> Optional[str]:
    """The cause, when ``error`` is a write into ``temporary`` that failed for a reason the user
    can fix (a full disk or quota anywhere; permissions or names on the temporary's files), else None.

    Libraries report a full disk differently: Python, numpy and pyarrow as an ``OSError`` with
    ``errno`` set (pyarrow without a file name), h5py and TensorFlow only in the message.
    """
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in _OUT_OF_SPACE_ERRNOS or (
                error.errno in _USER_FIXABLE_ERRNOS and temporary in str(error.filename or "")):
            return os.strerror(error.errno)
        return None
    message = str(error)
    for code in sorted(_OUT_OF_SPACE_ERRNOS):
        if os.strerror(code) in message:
            return os.strerror(code)
    return None


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _NAME_MAX


def _remove_empty(directories: list[str]) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


class Destination:
    """An output path, checked when created and written through :meth:`staged`.

    Args:
        path: the file or directory to create or replace.
        kind: what is written: ``"run"``, ``"demo"``, ``"saved_model"``,
            ``"directory"`` (directories, marked with this kind), or a file
            kind such as ``"tflite"``; None decides at the end (``"directory"``
            or a file) from what was written.
        overwrite: replace anything at ``path`` (never an input, nor a folder
            holding the current directory).
        replace_files: replace an existing file at ``path`` without ``overwrite``.
        sources: the inputs of the command; ``path`` may not be, contain or lie in one.

    Raises:
        UserError: naming ``path`` and the reason, for a destination it may not write.
    """

    def __init__(self, path: str, kind: Optional[str] = None, *, overwrite: bool = False,
                 replace_files: bool = False, sources: Sequence[str] = ()):
        self.requested = os.fspath(path)
        self.path = os.path.abspath(self.requested)
        self.kind = kind
        self.overwrite = overwrite
        self.replace_files = replace_files
        self.sources = [os.fspath(s) for s in sources]
        self._check_placement()
        if kind is not None:
            self._check_existing(kind in DIRECTORY_KINDS)
        remove_stale_temporaries(os.path.dirname(self.path))

    def _refuse(self, reason: str) -> UserError:
        return UserError(f"refusing to write {self.requested}: {reason}")

    def _check_placement(self) -> None:
        if self.requested.endswith(("/", os.sep)) and self.kind is not None and self.kind not in DIRECTORY_KINDS:
            raise self._refuse(f"a {self.kind} output is a file, but the path ends with a slash")
        if _within(os.getcwd(), self.path):
            raise self._refuse("it is or contains the current directory")
        for source in self.sources:
            if source and (_within(source, self.path) or _within(self.path, source)):
                raise self._refuse(f"it is, contains or lies inside the input {source}")
        parent = os.path.dirname(self.path)
        missing = _missing_ancestors(parent)
        ancestor = os.path.dirname(missing[-1]) if missing else parent
        if not os.path.isdir(ancestor):
            raise self._refuse(f"{ancestor} is a file, not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise self._refuse(f"no permission to write in {ancestor}")
        limit = _name_max(ancestor)
        too_long = [name for name in [os.path.basename(self.path), *map(os.path.basename, missing)]
                    if len(os.fsencode(name)) > limit]
        if too_long:
            raise self._refuse(f"a name in it is {len(os.fsencode(too_long[0]))} bytes long, more than the {limit} "
                               "the file system allows")

    def _check_existing(self, directory_output: bool) -> None:
        """Refuses to replace what is at the path, unless tfafm may (see the module docs)."""
        if self.overwrite or not os.path.lexists(self.path):
            return
        kind = self.kind or ("directory" if directory_output else "file")
        hint = ""
        if os.path.islink(self.path):
            found = "it is a symbolic link"
        elif os.path.isdir(self.path):
            if not os.listdir(self.path):
                return
            marked = artifact_kind(self.path)
            if marked == kind:
                return
            found = (f"it is a tfafm {marked}, not a {kind}" if marked
                     else f"it is a directory that tfafm did not write (no {ARTIFACT_MARKER} in it)")
            if not directory_output:
                hint = "; the path names the output file itself, not a folder for it"
        elif not directory_output and self.replace_files:
            return
        else:
            found = "a file exists there"
        raise self._refuse(f"{found} (--overwrite replaces it){hint}")

    @contextlib.contextmanager
    def staged(self) -> Iterator[str]:
        """Yields a fresh path to write the output at; swaps it into place when the block succeeds.

        Missing parent directories are created. On an exception nothing at the
        destination changes, and the temporary and the parents it created are removed.
        """
        parent, name = os.path.split(self.path)
        created = _missing_ancestors(parent)
        try:
            os.makedirs(parent, exist_ok=True)
            temp = _TempFolder(parent, name)
        except OSError as error:
            _remove_empty(created)
            raise self._refuse(error.strerror or str(error)) from None
        succeeded = False
        try:
            staged_dir = os.path.join(temp.path, _STAGED)
            os.mkdir(staged_dir)
            staged = os.path.join(staged_dir, name)
            try:
                yield staged
            except UserError as error:
                if staged in str(error):  # from a destination nested in this one: name ours instead
                    raise UserError(str(error).replace(staged, self.requested)) from None
                raise
            except Exception as error:
                cause = write_failure(error, temp.path)
                if cause is not None:
                    raise UserError(f"cannot write {self.requested}: {cause}") from None
                raise
            if not os.path.lexists(staged):
                raise RuntimeError(f"Nothing was written for {self.path}.")
            is_directory = os.path.isdir(staged) and not os.path.islink(staged)
            if is_directory:
                mark_artifact(staged, self.kind or "directory")
            self._check_placement()
            self._check_existing(is_directory)
            try:
                self._swap_in(staged, temp.path)
            except OSError as error:  # a file the user may not replace (another owner's, under a sticky bit)
                raise UserError(f"cannot write {self.requested}: {error.strerror or error}") from None
            succeeded = True
        finally:
            temp.remove()
            if not succeeded:
                _remove_empty(created)

    def _swap_in(self, staged: str, temp: str) -> None:
        if not os.path.lexists(self.path):
            os.rename(staged, self.path)
        elif exchange(staged, self.path):
            pass  # the previous output now sits at ``staged`` and goes with the temporary folder
        elif not os.path.isdir(staged) and not os.path.isdir(self.path):
            os.replace(staged, self.path)
        else:
            os.rename(self.path, os.path.join(temp, _PREVIOUS))
            os.rename(staged, self.path)


@contextlib.contextmanager
def atomic_path(path: str, kind: Optional[str] = None, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary path to write ``path``'s content at; swaps it into place on success.

    The library's way to write an output (see the module docs): an existing
    file at ``path`` is replaced, an existing directory only if it is empty or
    a tfafm directory of ``kind`` (or with ``overwrite``); on an exception the
    temporary is removed and ``path`` is left untouched.

    Raises:
        UserError: for a destination tfafm may not replace.
    """
    with Destination(path, kind, overwrite=overwrite, replace_files=True).staged() as tmp:
        yield tmp


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to the file ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
