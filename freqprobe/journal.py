"""Unfinished work lives in one place beside its output: streamed results, checkpoints, resume, signals.

A run (``freqprobe run --out DIR``) or an export (``freqprobe decompose --out FILE.npz``) writes
into the hidden sibling ``.NAME.partial/`` and renames it into place when it is complete, so the
output never exists half-written. The partial folder holds:

* ``LOCK`` — an advisory lock (``flock``) held by the process at work, with its pid: a second run
  into the same place is refused while the first lives; the lock dies with its process, even on
  SIGKILL, so a later run knows the state is stale;
* ``journal.json`` — what the work is (the options that decide its results) and when it started;
* ``progress.pt`` — the last checkpoint (samples finished, metric states, observers' states),
  replaced atomically;
* the outputs so far: ``samples.csv`` streamed batch by batch, ``model.pt`` of a fitted model, the
  arrays of an export.

SIGINT and SIGTERM (under :func:`graceful_stop`, which the CLI installs) stop at the next batch
boundary with a checkpoint; ``--resume`` continues from the last checkpoint after any stop,
SIGKILL included; a run into the same place without ``--resume`` removes the stale state first.

Durable: a checkpoint is on the disk before it counts — the rows of ``samples.csv`` it counts are
``fsync``-ed first, then the checkpoint file and ``journal.json`` are each written to a temporary
file, ``fsync``-ed, renamed into place and the folder ``fsync``-ed — so a power loss leaves the last
checkpoint or the one before, never a torn one; :meth:`Workspace.commit` flushes the finished output the same way before it is
moved into place. A full disk (``ENOSPC``) inside :func:`workspace` is one line
(:class:`NoSpaceError`: what was being written, how much is finished) and keeps the state for
``--resume``. :func:`output_lock` is the same lock for a command that writes into its output
folder itself (a training command, whose finished epochs stay in it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from .errors import StopRequested, UserFacingError

if TYPE_CHECKING:
    import torch

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the pid in LOCK
    fcntl = None  # type: ignore[assignment]

PARTIAL_SUFFIX = ".partial"
STATE_FILES = ("LOCK", "journal.json", "progress.pt", "progress.pt.tmp", ".progress.pt.tmp", "journal.json.tmp",
               ".journal.json.tmp")
#: the errors of a full device (a disk quota counts as full)
NO_SPACE = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


class NoSpaceError(UserFacingError):
    """The device filled up while writing; the state so far is kept for ``--resume`` (exit 2)."""


def no_space_cause(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` (or quota) :class:`OSError` behind ``exc`` (itself, or a cause or context of it), or None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        seen += 1
    return None


# ----------------------------------------------------------------------------- durable writes
def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to the disk; a file system that cannot is let be."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in NO_SPACE or exc.errno == errno.EIO:
            raise
    finally:
        os.close(fd)


_syncfs: list = []


def _syncfs_call() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None."""
    if not _syncfs:
        fn = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).syncfs
        _syncfs.append(fn)
    return _syncfs[0]


def sync_files(paths: Sequence[Path], folder: Path) -> None:
    """``paths`` (files under ``folder``) and their folders on the disk. Many files: one ``syncfs`` of their file
    system where there is one (an fsync per file costs ~50 times more for a folder of PNGs); else an fsync each."""
    fn = _syncfs_call() if len(paths) > 8 else None
    if fn is not None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if fn(fd) == 0:
                return
        finally:
            os.close(fd)
    for f in paths:
        fsync_path(f)
    for d in {Path(f).parent for f in paths}:
        fsync_path(d)


def write_durably(path: Path, data: bytes) -> None:
    """``data`` into ``path``: a temporary file beside it, fsync, rename, fsync of the folder (all or nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` as bytes (written with :func:`write_durably`, a full disk is a plain ``ENOSPC``)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def partial_dir(out: Path) -> Path:
    """Where the unfinished work for ``out`` lives: ``.NAME.partial`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}{PARTIAL_SUFFIX}")


# ----------------------------------------------------------------------------- stopping
_stop = {"signum": None}
_lock = threading.Lock()


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the running loop to stop at its next batch boundary (what the signal handlers do)."""
    with _lock:
        if _stop["signum"] is None:
            _stop["signum"] = signum


def stop_signal() -> int | None:
    """The signal that asked for a stop, or None."""
    return _stop["signum"]


def clear_stop() -> None:
    _stop["signum"] = None


def check_stop(what: str = "the work") -> None:
    """Raise :class:`StopRequested` when a stop was asked for (call at a batch boundary)."""
    signum = _stop["signum"]
    if signum is not None:
        raise StopRequested(f"{what} stopped by {signal.Signals(signum).name}", signum)


@contextlib.contextmanager
def graceful_stop(announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM stop at the next batch boundary (a second one aborts at once); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    say = announce or (lambda m: None)

    def handler(signum, frame):
        if _stop["signum"] is not None:  # the second signal: abort now (the last checkpoint stays)
            raise KeyboardInterrupt
        request_stop(signum)
        say(f"\n{signal.Signals(signum).name}: stopping after the current batch (send it again to abort at once)")

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    clear_stop()
    try:
        for s in old:
            signal.signal(s, handler)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        clear_stop()


# ----------------------------------------------------------------------------- the workspace
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _why(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class Workspace:
    """The hidden ``.NAME.partial`` folder of one output, locked by the process working in it.

    ``open()`` checks that the output can be written (before anything is loaded), refuses a
    second live process, and either resumes (``resume=True`` and a journal is there) or starts
    clean, removing the stale state a dead process left. ``commit()`` moves the finished output
    into place; ``discard()`` removes everything.
    """

    def __init__(self, out: Path, *, kind: str, resume: bool = False, flag: str = "--out",
                 announce: Callable[[str], None] | None = None) -> None:
        self.out = Path(out)
        self.kind = kind
        self.want_resume = resume
        self.flag = flag
        self.dir = partial_dir(self.out)
        self.resumed = False
        self._fd: int | None = None
        self._say = announce or (lambda m: None)
        self.journal: dict[str, Any] = {}
        #: how much is finished and kept, for the message of a full disk: (done, total or None, unit)
        self.finished: tuple[int, int | None, str] | None = None
        self._writing: Path | None = None
        self._created: list[Path] = []
        self._made_dir = False

    # -- opening
    def open(self) -> "Workspace":
        self._take_lock()
        jpath = self.dir / "journal.json"
        if self.want_resume and jpath.is_file():
            try:
                self.journal = json.loads(jpath.read_text())
            except (OSError, ValueError):
                self.journal = {}
            if not isinstance(self.journal, dict):
                self.journal = {}
            if self.journal.get("kind") == self.kind:
                self.resumed = True
                return self
            self._say(f"the unfinished state in {self.dir} is not a {self.kind}'s and cannot be resumed; starting from the beginning")
        elif self.want_resume:
            self._say(f"nothing to resume at {self.out} (no unfinished state in {self.dir}); starting from the beginning")
        stale = [p for p in self.dir.iterdir() if p.name != "LOCK"]
        if stale:
            self._say(f"removed the unfinished state of an earlier {self.kind} in {self.dir} (pass --resume to continue one instead)")
            for p in stale:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return self

    def _take_lock(self) -> None:
        """Check that the output can be written, then hold ``LOCK`` (refused while another process holds it)."""
        parent = self.out.parent
        top = parent
        while not top.exists() and top.parent != top:
            top = top.parent
        self._created = [q for q in [parent, *parent.parents] if not q.exists() and top in q.parents]
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserFacingError(f"cannot create the folder of {self.flag} {self.out}: {_why(exc)}; choose another {self.flag}") from None
        if not parent.is_dir():
            raise UserFacingError(f"{self.flag} {self.out}: {parent} is not a folder; choose another {self.flag}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserFacingError(f"cannot write to {self.flag} {self.out}: {parent} is not writable; choose another {self.flag}")
        self._remove_legacy()
        self._made_dir = not self.dir.exists()
        for _ in range(5):  # the holder may remove LOCK as it finishes (output_lock): then take the new one
            try:
                self.dir.mkdir(exist_ok=True)
            except OSError as exc:
                raise UserFacingError(f"cannot write to {self.flag} {self.out}: {_why(exc)}; choose another {self.flag}") from None
            try:
                fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # its holder removed the folder as it finished
                continue
            except OSError as exc:
                raise UserFacingError(f"cannot write to {self.flag} {self.out}: {_why(exc)}; choose another {self.flag}") from None
            if not self._lock(fd):
                os.close(fd)
                pid = self._lock_pid()
                who = f"process {pid}" if pid else "another process"
                state = f" (its unfinished state is in {self.dir})" if (self.dir / "journal.json").exists() else ""
                raise UserFacingError(f"another freqprobe {who} is writing to {self.out}{state}; "
                                      f"wait for it to finish or choose another {self.flag}")
            if _same_file(fd, self.dir / "LOCK"):
                break
            os.close(fd)
        else:  # pragma: no cover - five processes finishing in a row
            raise UserFacingError(f"another freqprobe process is writing to {self.out}; wait for it to finish or choose another {self.flag}")
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _lock(self, fd: int) -> bool:
        if fcntl is None:  # pragma: no cover
            pid = self._lock_pid()
            return not (pid and pid != os.getpid() and _pid_alive(pid))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _lock_pid(self) -> int | None:
        try:
            return int((self.dir / "LOCK").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _remove_legacy(self) -> None:
        """Folders ``.NAME.partial-PID`` of earlier versions, left by processes that no longer live."""
        pat = re.compile(re.escape(f".{self.out.name}.partial-") + r"(\d+)$")
        with contextlib.suppress(OSError):
            for p in self.out.parent.iterdir():
                m = pat.match(p.name)
                if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                    shutil.rmtree(p, ignore_errors=True)

    # -- what the work is
    def bind(self, fingerprint: Mapping[str, Any], *, command: str | None = None) -> None:
        """Record what this work is; on resume, refuse when it differs from what was started."""
        fp = json.loads(json.dumps(dict(fingerprint), default=str))
        if self.resumed:
            old = self.journal.get("fingerprint") or {}
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            if diff:
                shown = "; ".join(f"{k}: {_short(old.get(k))} then, {_short(fp.get(k))} now" for k in diff[:3])
                raise UserFacingError(
                    f"cannot resume {self.out}: it was started with other settings ({shown}); "
                    f"repeat the original options, or leave out --resume to start again"
                )
            return
        self.journal = {"kind": self.kind, "fingerprint": fp, "command": command,
                        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "pid": os.getpid()}
        self._write_json("journal.json", self.journal)

    def note(self, key: str, value: Any) -> None:
        """Keep ``value`` in the journal (the fit record of a fitted model, for a resumed run)."""
        self.journal[key] = value
        self._write_json("journal.json", self.journal)

    # -- writing outputs (atomic: a temporary file beside the target, then os.replace)
    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """A temporary path to write ``name`` (relative to the workspace) to; it replaces ``name`` when the block ends."""
        target = self.dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            with self.writing(target):
                yield tmp
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @contextlib.contextmanager
    def writing(self, path: Path) -> Iterator[None]:
        """Inside: ``path`` is what a full disk's message names when the error itself names no file."""
        before, self._writing = self._writing, Path(path)
        yield
        self._writing = before  # not after an error: its message names the file

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` in the workspace atomically; its path."""
        with self.atomic(name) as tmp:
            tmp.write_text(text)
        return self.dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        """``obj`` as indented JSON in ``name``, atomically; its path."""
        return self.write_text(name, json.dumps(obj, indent=2, default=str) + "\n")

    def _write_json(self, name: str, obj: Any) -> None:
        self._durably(self.dir / name, (json.dumps(obj, indent=2, default=str) + "\n").encode())

    def _durably(self, path: Path, data: bytes) -> None:
        with self.writing(path):
            write_durably(path, data)

    def count(self, done: int, total: int | None, unit: str = "samples") -> None:
        """Record that ``done`` of ``total`` ``unit`` are finished and kept (what a full disk's message says)."""
        self.finished = (int(done), None if total is None else int(total), unit)

    def no_space_message(self, exc: OSError) -> str:
        """``no space left on device while writing X; N of M samples finished, resume with --resume after freeing space``."""
        where = exc.filename or self._writing or self.dir
        with contextlib.suppress(ValueError):
            where = Path(where).relative_to(Path.cwd())
        done = "nothing finished yet"
        if self.finished is not None:
            n, total, unit = self.finished
            done = f"{n} of {total} {unit} finished" if total is not None else f"{n} {unit} finished"
        return (f"no space left on device while writing {where}; {done} (the state is kept in {self.dir}), "
                "resume with --resume after freeing space")

    # -- checkpoints
    def load_progress(self) -> dict | None:
        p = self.dir / "progress.pt"
        if not (self.resumed and p.is_file()):
            return None
        try:
            import torch

            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserFacingError(f"cannot resume {self.out}: its checkpoint {p} is unreadable ({type(exc).__name__}); "
                                  "leave out --resume to start again") from None

    def save_progress(self, progress: Mapping[str, Any]) -> None:
        """The checkpoint, durably (see the module docstring): the last one or the one before survives a power loss."""
        self._durably(self.dir / "progress.pt", torch_bytes(dict(progress)))

    # -- closing
    def commit(self, payload: Path | None = None) -> None:
        """Move the finished output into place: ``payload`` (a file in the workspace) or the workspace folder itself."""
        if payload is not None:
            fsync_path(payload)
            os.replace(payload, self.out)
            fsync_path(self.out.parent)
            self.discard()
            return
        for name in STATE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
        _fsync_tree(self.dir)
        if self.out.is_dir():
            self.out.rmdir()  # empty: checked before the work started
        os.replace(self.dir, self.out)
        fsync_path(self.out.parent)
        self._release()

    def discard(self) -> None:
        """Remove everything this work wrote, including the folders it created for its output."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._release()
        for q in getattr(self, "_created", []):  # deepest first
            with contextlib.suppress(OSError):
                q.rmdir()

    def release(self) -> None:
        """Keep the state for a later ``--resume``; let another process take over."""
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def unlock(self) -> None:
        """Let go of :func:`output_lock`: remove ``LOCK`` (and the folder when it holds nothing else, and the
        folders made for the output when it was never written)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.dir / "LOCK").unlink()  # before letting go: a process waiting on it takes a new one
        self._release()
        with contextlib.suppress(OSError):
            self.dir.rmdir()
        if not self.out.exists():
            for q in self._created:  # deepest first
                with contextlib.suppress(OSError):
                    q.rmdir()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, shapes, dtypes, values): the identity of weights passed as an object."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
        t = v.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one its holder removed as we opened it)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _fsync_tree(root: Path) -> None:
    """Every file under ``root`` and the folders themselves on the disk (before a rename publishes them)."""
    files = [Path(folder) / f for folder, _, names in os.walk(root) for f in names]
    sync_files(files, root)
    for folder, _, _ in os.walk(root):
        fsync_path(Path(folder))


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


@contextlib.contextmanager
def workspace(out: Path, *, kind: str, resume: bool = False, flag: str = "--out",
              announce: Callable[[str], None] | None = None) -> Iterator[Workspace]:
    """Open a :class:`Workspace`; on an error a fresh one is removed (a resumed one is kept), on a stop it stays."""
    ws = Workspace(out, kind=kind, resume=resume, flag=flag, announce=announce).open()
    try:
        yield ws
    except (StopRequested, KeyboardInterrupt, NoSpaceError):
        ws.release()
        raise
    except BaseException as exc:
        full = no_space_cause(exc)
        if full is not None:  # the state so far is consistent: keep it for --resume
            ws.release()
            raise NoSpaceError(ws.no_space_message(full)) from None
        if ws.resumed:
            ws.release()
        else:
            ws.discard()
        raise
    else:
        ws._release()


@contextlib.contextmanager
def output_lock(out: Path, *, kind: str, flag: str = "--out",
                announce: Callable[[str], None] | None = None) -> Iterator[Workspace]:
    """Hold the lock a :func:`workspace` takes for ``out`` (``.NAME.partial/LOCK``) while a command writes into
    ``out`` itself: a second process (any command) into the same output is refused in one line until it ends.

    The output is checked first (its folder can be created and written: before anything is loaded). Nothing
    else of the partial folder is touched; ``LOCK`` (and the folder, when empty) goes when the block ends.
    """
    ws = Workspace(out, kind=kind, flag=flag, announce=announce)
    ws._take_lock()
    try:
        yield ws
    finally:
        ws.unlock()


# ----------------------------------------------------------------------------- the run journal
class RunJournal:
    """Checkpoints of a run's evaluations ("segments": one per evaluation, e.g. per swept transform).

    The per-sample rows of all segments stream into one ``samples.csv``; a checkpoint records
    how many bytes of it are final, how many batches each segment finished, and the states of
    its metrics and observers. On resume the file is cut back to the last checkpoint.
    """

    SAMPLES = "samples.csv"

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        saved = ws.load_progress() or {}
        if saved and saved.get("version") != 2:
            raise UserFacingError(f"cannot resume {ws.out}: its checkpoint was written by an earlier freqprobe "
                                  f"(format {saved.get('version')}); leave out --resume to start again")
        self.saved_segments: list[dict] = list(saved.get("segments", []))
        self.segments: list[dict] = []
        self.csv_bytes = int(saved.get("csv_bytes", 0))
        self._csv = None
        #: samples per evaluation, where the loop says (:meth:`begin`)
        self.totals: dict[int, int] = {}
        #: seconds the last checkpoint cost, set by the loop (flushing the rows in flight included)
        self.checkpoint_s = 0.0
        self._last = time.perf_counter()
        path = ws.dir / self.SAMPLES
        if path.exists():
            if not self.saved_segments:
                path.unlink()
                self.csv_bytes = 0
            else:
                with open(path, "r+b") as f:
                    size = f.seek(0, os.SEEK_END)
                    if size < self.csv_bytes:  # cut short after its checkpoint: the rows it counts are gone
                        raise UserFacingError(
                            f"cannot resume {ws.out}: its {path.name} in {ws.dir} is shorter than its checkpoint records "
                            f"({size} of {self.csv_bytes} bytes; damaged or cut short); leave out --resume to start again")
                    f.truncate(self.csv_bytes)
        elif any(int(s.get("rows", 0)) for s in self.saved_segments):
            raise UserFacingError(f"cannot resume {ws.out}: its {self.SAMPLES} is missing from {ws.dir}; "
                                  "leave out --resume to start again")
        self._count()

    @property
    def samples_path(self) -> Path:
        return self.ws.dir / self.SAMPLES

    def begin(self, label: str, total: int | None = None) -> "Segment":
        """The next evaluation's checkpoints (``total``: its samples, for the message of a full disk)."""
        if total is not None:
            self.totals[len(self.segments)] = int(total)
        i = len(self.segments)
        saved = self.saved_segments[i] if i < len(self.saved_segments) else None
        if saved is not None and saved.get("label") != label:
            raise UserFacingError(f"cannot resume {self.ws.out}: its evaluation {i + 1} was {saved.get('label')!r}, now {label!r}; "
                                  "leave out --resume to start again")
        seg = Segment(self, i, label, saved)
        self.segments.append(seg.record)
        return seg

    def csv(self):
        if self._csv is None:
            self._csv = open(self.samples_path, "ab")
        return self._csv

    def due(self) -> bool:
        """Whether a checkpoint is due: keeps their cost under ~5 % of the run."""
        return time.perf_counter() - self._last >= 20 * self.checkpoint_s

    def save(self) -> None:
        """A checkpoint: the rows so far on the disk, then the checkpoint that counts them (both fsync-ed)."""
        if self._csv is not None:
            with self.ws.writing(self.samples_path):
                self._csv.flush()
                os.fsync(self._csv.fileno())
            self.csv_bytes = self._csv.tell()
        self.ws.save_progress({"version": 2, "segments": self.segments, "csv_bytes": self.csv_bytes})
        self._count()
        self._last = time.perf_counter()

    def _count(self) -> None:
        """What the last checkpoint keeps, for the message of a full disk (samples of the evaluations so far)."""
        segs = self.segments or self.saved_segments
        done = sum(int(s.get("n") or 0) for s in segs)
        known = len(self.totals) == len(segs) and segs
        self.ws.count(done, sum(self.totals.values()) if known else None, "samples")

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None


class Segment:
    """One evaluation's checkpoints inside a :class:`RunJournal`."""

    def __init__(self, journal: RunJournal, i: int, label: str, saved: dict | None) -> None:
        self.journal = journal
        self.saved = saved
        self.record: dict[str, Any] = dict(saved) if saved else {"label": label, "done": False, "batches": 0, "rows": 0}
        if saved is None:  # rows of samples.csv (after its header) before this evaluation's
            self.record["rows_start"] = sum(int(s.get("rows", 0)) for s in journal.segments)

    def checkpoint(self, *, batches: int, n: int, columns: list | None, rows: int, evaluators: list,
                   nonfinite: list | None, done: bool = False) -> None:
        """Record that ``batches`` batches (``n`` samples, ``rows`` rows of samples.csv) are finished, with the
        evaluators' states (:meth:`freqprobe.evaluators.Evaluator.state_dict`)."""
        self.record.update(done=done, batches=batches, n=n, columns=columns, rows=rows, evaluators=evaluators,
                           nonfinite=nonfinite)
        self.journal.save()
