"""Run directories and atomic file writes.

Every file pluralign writes goes through `atomic_write_*`: the content lands in a temporary file in the
same directory and is renamed over the target, so a crash never leaves a half-written file. A failed
write (disk full, read-only file system, …) is a `PluralignError` naming the path and the cause.

A run directory can be locked (`RunDir.lock`) so that two runs never write one directory at once: the
lock is an advisory `flock` on `.lock`, which the kernel releases when its holder dies, so the lock of a
killed run is never stale; the file records the holder's pid for the error message.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pluralign.errors import ConfigError, PluralignError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not locked
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_root() -> Path:
    """Where pluralign keeps what it builds once (the sandbox's base model, converted GGUF models):
    $PLURALIGN_CACHE, else ~/.cache/pluralign."""
    return Path(os.environ.get("PLURALIGN_CACHE") or Path.home() / ".cache" / "pluralign")


def os_cause(e: BaseException) -> str:
    """The human cause of an I/O failure, whichever library raised it: an OSError's strerror, or the
    `os error N` that Rust-backed writers (safetensors) embed in their message."""
    if isinstance(e, OSError) and e.errno is not None:
        return f"{os.strerror(e.errno).lower()} (errno {e.errno})"
    m = re.search(r"os error (\d+)", str(e))
    if m:
        return f"{os.strerror(int(m.group(1))).lower()} (errno {m.group(1)})"
    return f"{type(e).__name__}: {e}"


def io_error(path: str | os.PathLike, e: BaseException, action: str = "write") -> PluralignError:
    """A `PluralignError` for a failed read or write of `path`, with its cause and the free space left."""
    where = Path(path)
    free = ""
    with contextlib.suppress(OSError):
        probe = next((p for p in [where, *where.parents] if p.exists()), None)
        if probe is not None:
            free = f"; {shutil.disk_usage(probe).free / 2**20:.1f} MiB free on that device"
    return PluralignError(f"cannot {action} {path}: {os_cause(e)}{free}")


def check_writable(path: str | os.PathLike, flag: str, directory: bool = False) -> None:
    """Before any work, a `ConfigError` naming `flag` when `path` cannot be written the way the atomic
    writers write it (missing parents made, a temporary file next to it renamed over it): a directory where
    a file goes (or a file where a directory goes), a file among its parents, or a place that takes no new
    file (read-only, no permission). A command found that out only after all its work was done."""
    where = Path(path)
    if where.exists() and where.is_dir() != directory:
        raise ConfigError(f"{flag} {path}: is {'a file' if directory else 'a directory'}; give "
                             f"{'a directory' if directory else 'a file path'}")
    ancestor = next(p for p in [*([where] if directory else []), *where.parents, Path(".")] if p.exists())
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {path}: {ancestor} is a file, not a directory")
    try:  # a probe file, at once removed: permissions alone do not say (root, read-only mounts, /proc)
        with tempfile.TemporaryFile(dir=ancestor, prefix=".pluralign-probe."):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {ancestor}: {os_cause(e)}") from None


def follow_umask(root: str | os.PathLike) -> None:
    """Give a directory written under a temporary name (mkdtemp makes it 0700; some writers, transformers'
    weights among them, make their files 0600) the permissions `mkdir` and `open` would have given it."""
    for path in [Path(root), *Path(root).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~_UMASK)


def write_dir(out_dir: str | os.PathLike, write: Any) -> Path:
    """`write(directory)` into a temporary directory next to `out_dir`, then rename it into place: `out_dir`
    appears whole or not at all (a model, a reward model, a soup), and an existing one is replaced with only
    a brief window without it. A full or read-only disk is a one-line error naming `out_dir`."""
    out = Path(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise io_error(out, e) from None
    try:
        write(tmp)
        follow_umask(tmp)
        _replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or "os error" in str(e):  # safetensors reports a full disk as its own error
            raise io_error(out, e) from None
        raise
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with only a brief window without one."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".old"))
    try:
        os.replace(dst, old / dst.name)
    except OSError:
        old.rmdir()
        raise
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: it replaces `path` only when the block ends without error,
    so large objects (optimizer states) stream to disk without a copy of their bytes in memory."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise io_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; written files follow the umask like open()
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise io_error(path, e) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, to_json(obj, indent) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(to_json(r) + "\n" for r in rows))


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of `obj`, the one encoding of every JSON file pluralign writes: NaN and ±inf
    (which `json.dumps` writes as the non-JSON tokens NaN/Infinity, rejected by other readers) become
    null, "no value"; numpy/torch numbers and arrays become plain numbers and lists, paths strings."""
    return json.dumps(_plain(obj), indent=indent, allow_nan=False)


def _plain(o: Any) -> Any:
    """`o` with containers rebuilt, tensors and arrays as lists, paths as text and non-finite floats as None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_plain(v) for v in o]
    if isinstance(o, str | int | bool) or o is None:
        return o
    if hasattr(o, "tolist"):  # numpy / torch scalars and arrays
        return _plain(o.tolist())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


_HELD: set[tuple[str, int]] = set()  # (run directory, thread) whose lock this process holds


class RunDir:
    """The directory of one run: `config.yaml`, `metrics.jsonl`, `checkpoints/`, `report/`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(self.root, e, "create the run directory") from None

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def log_metrics(self, row: dict) -> None:
        """Append one JSON line. Appends of a single short line are atomic enough on POSIX; a torn last
        line after a crash is skipped by `read_metrics`."""
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(to_json(row) + "\n")
        except OSError as e:
            raise io_error(self.metrics_path, e) from None

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process: a second run on it (in this or another process)
        fails at once, naming the holder's pid. The kernel drops the lock when its holder exits or is
        killed, so a crashed run never blocks the next one. The thread that holds it may take it again
        (a recipe holds it from its loop to its saved model; the loop takes it too)."""
        key = (os.path.realpath(self.root), threading.get_ident())
        if fcntl is None or key in _HELD:
            yield
            return
        path = self.root / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise io_error(path, e, "create the lock file") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                raise PluralignError(
                    f"run directory {self.root} is in use by another run (pid {holder}, lock file {path}); "
                    "wait for it to finish or use another output directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
