"""Local-disk backend: durable, atomic writes on a POSIX filesystem.

Why: a checkpoint is only as safe as its slowest-to-reach-disk byte. Every put writes a temporary file
in the destination directory (starting the writeback of each 8 MiB as it goes, so the disk works while
the writer still produces bytes), fsyncs it, then publishes it in one step — ``os.replace`` for
overwrite and compare-and-swap, ``os.link`` for create-only (``link`` fails if the name exists, so
exactly one of several racing creators wins with a complete file) — and fsyncs the directory so the new
name survives a power cut. Compare-and-swap serialises writers of one key through an ``flock`` on a
sidecar lock file in a hidden ``.locks`` directory (there only while it is held or waited for); the
version token is inode + mtime + size, which changes on every publish because every publish is a new
inode.

Reads: from the page cache in 512 KiB pieces, each hashed while still in the CPU's cache; from files
that are not in the page cache, a large chunk per call, past the cache (``O_DIRECT``) where the
filesystem allows it (``read_pieces_direct``; a restore's ``transfer.read_plan`` decides).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ckptstore.errors import AlreadyExists, NotFound, PreconditionFailed, StorageError
from ckptstore.storage.interface import (
    Buffer,
    Capabilities,
    ObjectInfo,
    PutMode,
    StorageBase,
    Version,
    as_bytes_view,
    check_key,
)

_TMP_PREFIX = ".tmp-"
_LOCK_DIR = ".locks"


def _version(st: os.stat_result) -> Version:
    return Version(f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}")


class LocalStorage(StorageBase):
    """Files under a root directory; keys map to relative paths."""

    capabilities = Capabilities(conditional_create=True, compare_and_swap=True, ranged_get=True, durable=True)

    # Two streams saturate this class of disk (one fsync'd stream does not); more threads only contend.
    io_workers = max(2, min(4, os.cpu_count() or 2))
    # Reads are another matter: with 4 requests in flight a virtual disk's cold reads ran 1.4x faster
    # than with 2. And a direct read (``read_pieces_direct``) hashes its 64 MiB only once it has all
    # landed, with nothing in flight meanwhile: 6 readers keep the disk busier than 4 (cold 1 GiB
    # restores 0.614 against 0.661 s and 0.661 against 0.709 s in two probes of 10-12 interleaved
    # rounds; 8 readers 0.620 s). Plain cold reads gained from 6 as well (0.659 against 0.686 s). Reads
    # from the page cache are memory copies, bound by the CPUs: a restore whose files are cached runs
    # no more readers than CPUs (see ``cached``).
    read_workers = max(6, io_workers)
    # Reads in 512 KiB pieces, each checksummed right after it lands, while it is still in the core's L2
    # cache. The hash of a piece read back from further away runs at a fraction of its speed: on a Xeon
    # with 2 MiB of L2 per core, hashing each piece right after its preadv ran at 27 GB/s with 512 KiB
    # pieces, 19 with 1 MiB, 13 with 2 MiB (the pread itself ran at 5.1-5.6 GB/s whatever the size);
    # warm 1 GiB restores took 0.193 s against 0.214 s with 2 MiB pieces (0.047 against 0.092 s of
    # user CPU; 8 interleaved rounds). On a machine with 32 MiB of L3, 4 threads x 8 MiB pieces ran
    # ~10% slower than 2 MiB, and 512 KiB measured the same as 2 MiB. 512 KiB divides a huge page, so
    # pieces never straddle two (see ``read_pieces``); 256 KiB was no faster.
    read_piece_size = 512 << 10
    # Unless the files are on disk (not in the page cache: see ``transfer.read_plan``). Then each chunk
    # of a large tensor (64 MiB by default) is one call: read past the page cache (``direct_reads``,
    # ``read_pieces_direct``), or through it in one call where direct reads are off, and hashed once it
    # has landed. A disk's cold reads run faster in long calls: one checkpoint of 2 x 512 MiB, 4
    # threads, 16 interleaved rounds, each the faster of two cold reads: 0.523 s in 64 MiB calls hashed
    # after each, 0.521 s unhashed in one call per 256 MiB range (the raw reader), 0.558-0.581 s in
    # 512 KiB-16 MiB calls hashed as they land, with the same system time in all (0.30-0.32 s).
    cold_read_piece_size = 64 << 20
    # Past the page cache, a cold read's bytes go from the disk straight into the arrays: no page cache
    # to allocate and fill (as much fresh memory again as the checkpoint, which on a VM whose balloon
    # hands free memory back to the host is where cold reads' time went astray: single reads of 1 GiB
    # took 0.35-4.0 s of system time), no copy out of it, and the cache is left to what the job uses.
    # In one benchmark run (7 repetitions, each the faster of two cold reads) the 1 GiB restore took
    # 0.675 s with 0.21 s of system time this way, 0.700 s / 0.43 s in 64 MiB calls through the page
    # cache, and 0.886 s / 0.96 s in 512 KiB pieces (the raw readers: 0.597-0.636 s, 0.37-0.38 s); in
    # the run before, the last two measured the same (0.602 / 0.594 s).
    direct_reads = True
    # A put that fsyncs asks the kernel to start writing each 8 MiB to disk as soon as it is written
    # (``start_writeback``) instead of leaving it all to the final fsync: the disk then works while
    # Python still copies and hashes. Measured on this virtual disk, 10 alternating saves of 1 GiB:
    # 0.71 -> 0.61 s (large tensors) and 0.82 -> 0.59 s (10k small tensors). The default of the
    # ``writeback_window`` option; 0 turns it off.
    writeback_window = 8 << 20

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        writeback_window: int | None = None,
        direct_reads: bool | None = None,
    ):
        """``fsync``: make every put durable before it returns (off only for scratch data). ``writeback_window``:
        bytes a put writes before it asks the kernel to start writing them to disk (default 8 MiB; 0: leave
        it all to the fsync), as ``storage_options={"writeback_window": ...}`` of a ``CheckpointStore``.
        ``direct_reads``: whether restores read large tensors from files on disk past the page cache
        (default True; see ``read_pieces_direct``); False leaves every read to the page cache."""
        if direct_reads is not None:
            if not isinstance(direct_reads, bool):
                raise ValueError(f"direct_reads must be True or False, got {direct_reads!r}")
            self.direct_reads = direct_reads
        if writeback_window is not None:
            if isinstance(writeback_window, bool) or not isinstance(writeback_window, int) or writeback_window < 0:
                raise ValueError(f"writeback_window must be a number of bytes >= 0 (0: off), got {writeback_window!r}")
            self.writeback_window = writeback_window
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root}"
        self._real_root = os.path.realpath(self.root)
        self.fsync = fsync
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"{self.root}: model_dir exists and is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error("create directory", "", e) from e

    # -- helpers -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def open_for_read(self, key: str, flags: int = 0) -> int:
        """A read-only fd for ``key`` that refuses symlinks, so a model_dir from a stranger (an unpacked
        tarball) cannot make a restore read files outside it (``flags``: more ``os.open`` flags). The caller
        closes the fd.

        The last component is opened with ``O_NOFOLLOW``; the directories on the way are checked after
        the open, through the path the kernel gives for the fd (``/proc/self/fd``: one ``readlink``, so
        what is checked is the file actually opened). Where that path differs (or ``/proc`` is not
        there), ``os.path.realpath`` decides: it costs ~45 us of Python per call, against ~5 us for the
        ``readlink``, and a restore opens a file per run of small tensors and per large chunk."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | flags)
        except OSError as e:
            self._refuse_symlinked_directories(path, key)  # a link on the way explains a failure first
            if e.errno == errno.ELOOP:
                raise StorageError(f"{path}: is a symlink; links in a model_dir are not followed") from None
            if e.errno == errno.EISDIR:
                raise NotFound(f"{path}: not found (it is a directory)") from None
            raise self._error("read", key, e) from e
        try:
            if _opened_path(fd) != os.path.join(self._real_root, key):
                self._refuse_symlinked_directories(path, key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_symlinked_directories(self, path: Path, key: str) -> None:
        if os.path.realpath(path.parent) != os.path.join(self._real_root, *key.split("/")[:-1]):
            raise StorageError(f"{path}: a directory on the way is a symlink; links in a model_dir are not followed")

    def _error(self, op: str, key: str, e: OSError) -> Exception:
        where = f"{self.root}/{key}" if key else str(self.root)
        if isinstance(e, FileNotFoundError):
            return NotFound(f"{where}: not found ({op})")
        reason = os.strerror(e.errno) if e.errno else str(e)
        hint = ""
        if e.errno == errno.ENOSPC:
            hint = " — the disk is full; earlier checkpoints are untouched"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = " — the model_dir is not writable"
        return StorageError(f"{where}: {op} failed: {reason}{hint}")

    def _fsync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _makedirs(self, directory: Path) -> None:
        """Create missing parents and fsync each new entry's parent, so new directories survive a crash."""
        missing = []
        while not directory.is_dir() and directory != self.root:
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                pass
            self._fsync_dir(d.parent)

    def _write_temp(self, path: Path, data: Buffer | Iterable[Buffer]) -> Path:
        """Write ``data`` to a fresh temp file beside ``path``, fsync it, return its path."""
        tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
            window = self.writeback_window if self.fsync and CAN_START_WRITEBACK else 0
            written = flushed = 0
            for piece in pieces:
                mv = as_bytes_view(piece)
                while len(mv):
                    n = os.write(fd, mv)
                    mv = mv[n:]
                    written += n
                if window and written - flushed >= window:
                    start_writeback(fd, flushed, written - flushed)
                    flushed = written
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    @contextmanager
    def _key_lock(self, key: str):
        """Hold the lock of ``key``: an ``flock`` on ``.locks/<key>.lock``, a file that exists only while
        somebody holds or waits for it (one per key ever locked would pile up: a manifest replaced by
        ``overwrite=True`` locks its own key).

        The holder unlinks the file before it lets go, so a waiter that opened it earlier may be granted
        the lock of a file no longer there while a newcomer locks a new file under that name. Whoever gets
        an ``flock`` therefore checks that its fd is still the file at the path, and starts again if not:
        the file at the path changes only when its holder unlinks it, so at most one process holds it.
        (Earlier builds of 0.1.0, before commit 3666283, kept lock files and did not re-check: a writer of
        such a build and one of this code must not write one model_dir at the same time.)"""
        lock_path = self.root / _LOCK_DIR / (key.replace("/", "%") + ".lock")
        lock_path.parent.mkdir(exist_ok=True)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = os.stat(lock_path)
            except FileNotFoundError:  # unlinked by the holder we waited for
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if os.path.samestat(os.fstat(fd), current):
                break
            os.close(fd)  # a newer lock file is at the path: lock that one
        try:
            yield
        finally:
            try:
                lock_path.unlink()
            except OSError:  # gone already, or not ours to remove: a lock file left behind is harmless
                pass
            os.close(fd)  # closing releases the flock

    # -- contract ------------------------------------------------------------------------------
    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        fd = self.open_for_read(key)
        try:
            with os.fdopen(fd, "rb") as f:
                if start:
                    f.seek(start)
                if end is None:
                    return f.read()
                # Clamp to the file: read(n) allocates n bytes up front, and callers bound reads with
                # generous limits (a 256 MiB cap on a 1 KiB manifest must not cost 256 MiB).
                end = min(end, os.fstat(f.fileno()).st_size)
                return f.read(max(0, end - (start or 0)))
        except IsADirectoryError:
            raise NotFound(f"{self.root}/{key}: not found (get; it is a directory)") from None
        except OSError as e:
            raise self._error("get", key, e) from e

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        for _ in self.read_pieces(key, offset, out, len(out) or 1):
            pass

    def read_pieces(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
        """``read_into`` in pieces of at most ``read_piece_size`` through one fd, yielding each filled piece
        (the symlink check and open cost more than reading a megabyte, so they happen once per call).

        A piece size that is a whole number of pages is counted from the destination's address, not
        from ``out``'s start: every piece but the first and last fills whole pieces of memory that start
        at multiples of it. A restore reads into fresh memory, which the kernel zeroes when the copy
        first touches each (2 MiB, huge) page: pieces of a size that divides a huge page fill each page
        in turn, where pieces straddling two pages left part of each for the next piece to fill. With
        2 MiB pieces the 10k-tensor 1 GiB warm restore, whose runs start anywhere in its arena, took
        0.194 s and 0.327 s of CPU that way against 0.203 s and 0.358 s (20 alternating repetitions)."""
        path = self._path(key)
        view = as_bytes_view(out)
        size = len(view)
        step = piece_size or self.read_piece_size or size or 1
        stop = min(size, step)
        if size > step and step % mmap.PAGESIZE == 0:
            stop = step - ctypes.addressof(ctypes.c_char.from_buffer(view)) % step
        fd = self.open_for_read(key)
        try:
            start = 0
            while start < size:
                piece = view[start:stop]
                _fill(fd, piece, offset + start, offset + size, path)
                yield piece
                start, stop = stop, min(size, stop + step)
        except OSError as e:
            raise self._error("read", key, e) from e
        finally:
            os.close(fd)

    def read_pieces_direct(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
        """``read_pieces`` past the page cache (``O_DIRECT``): the disk writes straight into ``out``, with no
        page-cache memory to allocate and no copy out of it — for files that are not in the page cache
        (a restore's ``read_plan`` decides), whose bytes would otherwise pass through 2x the memory.
        Pieces of ``piece_size`` (default ``cold_read_piece_size``), all but the last a whole number of
        pages; the bytes past the last whole 4096 of the range come through the page cache.

        Where direct I/O cannot be used — an ``offset`` or ``out`` not 4096-aligned, a filesystem that
        refuses ``O_DIRECT`` (tmpfs on older kernels), no ``O_DIRECT`` on this OS — this is ``read_pieces``."""
        view = as_bytes_view(out)
        size = len(view)
        body = size // _DIRECT_ALIGN * _DIRECT_ALIGN
        if (not _O_DIRECT or not self.direct_reads or not body or offset % _DIRECT_ALIGN
                or ctypes.addressof(ctypes.c_char.from_buffer(view)) % _DIRECT_ALIGN):
            yield from self.read_pieces(key, offset, out, piece_size)
            return
        try:
            fd = self.open_for_read(key, _O_DIRECT)
        except StorageError:
            if not self._direct_refused(key):
                raise
            yield from self.read_pieces(key, offset, out, piece_size)
            return
        path = self._path(key)
        step = max(_DIRECT_ALIGN, (piece_size or self.cold_read_piece_size) // _DIRECT_ALIGN * _DIRECT_ALIGN)
        start, refused = 0, False
        try:
            while start < body and not refused:
                piece = view[start : min(body, start + step)]
                done = 0
                while done < len(piece):
                    try:
                        n = os.preadv(fd, [piece[done:]], offset + start + done)
                    except OSError as e:
                        # EINVAL before any byte: the filesystem opens with O_DIRECT but does not read so.
                        refused = e.errno == errno.EINVAL and not start and not done
                        if not refused:
                            raise
                        self.direct_reads = False
                        break
                    if n == 0 or n % _DIRECT_ALIGN:  # the file ends (a direct read stops at its end)
                        end = offset + start + done + n
                        raise StorageError(f"{path}: object ends at {end} bytes, {offset + size - end} more expected")
                    done += n
                else:
                    yield piece
                    start += len(piece)
        except OSError as e:
            raise self._error("read", key, e) from e
        finally:
            os.close(fd)
        if start < size:  # the tail past the last whole 4096 bytes (or all of it, if refused)
            yield from self.read_pieces(key, offset + start, view[start:], piece_size)

    def _direct_refused(self, key: str) -> bool:
        """Whether opening ``key`` failed only because its filesystem refuses ``O_DIRECT`` (then direct
        reads are off for this storage from now on)."""
        try:
            os.close(self.open_for_read(key))
        except StorageError:
            return False  # fails without O_DIRECT too: that error is the one to report
        self.direct_reads = False
        return True

    def cached(self, key: str, samples: int = 16) -> bool:
        """Whether ``key``'s bytes are in the page cache, judged by ``samples`` pages spread over it
        (``mincore`` on a mapping of the file: nothing is read, no read-ahead is started). False where
        that cannot be told (no ``mincore``)."""
        if _libc is None:
            return False
        fd = self.open_for_read(key)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return True
            address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)  # the mapping holds the file
        if address in (None, _MAP_FAILED):
            return False
        try:
            pages = -(-size // mmap.PAGESIZE)
            resident = ctypes.c_ubyte()
            for page in range(0, pages, max(1, pages // samples)):
                at = address + page * mmap.PAGESIZE
                if _libc.mincore(at, mmap.PAGESIZE, ctypes.byref(resident)) != 0 or not resident.value & 1:
                    return False
            return True
        finally:
            _libc.munmap(address, size)

    def read_through(self, key: str, offset: int, nbytes: int, buffer: memoryview) -> Iterator[memoryview]:
        """``read_through`` with one fd for every piece."""
        path = self._path(key)
        view = as_bytes_view(buffer)
        step = len(view)
        fd = self.open_for_read(key)
        try:
            for start in range(0, nbytes, step):
                piece = view[: min(step, nbytes - start)]
                _fill(fd, piece, offset + start, offset + nbytes, path)
                yield piece
        except OSError as e:
            raise self._error("read", key, e) from e
        finally:
            os.close(fd)

    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        path = self._path(key)
        try:
            self._makedirs(path.parent)
            tmp = self._write_temp(path, data)
        except NotADirectoryError as e:
            raise StorageError(f"{path}: a parent of this key is a file") from e
        except OSError as e:
            raise self._error("put", key, e) from e
        try:
            if mode == "create":
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise AlreadyExists(f"{path}: already exists (create-only put)") from None
            elif mode == "overwrite":
                os.replace(tmp, path)
            elif isinstance(mode, Version):
                with self._key_lock(key):
                    try:
                        current = _version(os.stat(path))
                    except FileNotFoundError:
                        current = None
                    if current != mode:
                        raise PreconditionFailed(f"{path}: changed since version {mode.token} was read")
                    os.replace(tmp, path)
            else:
                raise ValueError(f"invalid put mode {mode!r}")
            self._fsync_dir(path.parent)
            st = os.stat(path)
        except (AlreadyExists, PreconditionFailed):
            raise
        except OSError as e:
            raise self._error("put", key, e) from e
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key, st.st_size, _version(st), st.st_mtime)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        fd = self.open_for_read(key)
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise self._error("head", key, e) from e
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"{path}: not found (head; it is a directory)")
        return ObjectInfo(key, st.st_size, _version(st), st.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._error("delete", key, e) from e
        # Remove directories left empty, up to the root, so pruned steps leave no litter.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, base)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            dirnames[:] = [d for d in dirnames if d != _LOCK_DIR and (rel_dir + d).startswith(prefix[: len(rel_dir + d)])]
            for name in filenames:
                key = rel_dir + name
                # Temp files of interrupted puts are listed too, so garbage collection can find them.
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(key, st.st_size, _version(st), st.st_mtime)


def open_url(url: str, **storage_options) -> LocalStorage:
    """Factory for ``file://`` URLs and plain paths."""
    path = url[len("file://"):] if url.startswith("file://") else url
    return LocalStorage(path, **storage_options)


def _load_libc() -> ctypes.CDLL | None:
    """libc's ``mmap``, ``munmap`` and ``mincore`` (for ``LocalStorage.cached``), typed; None without them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    except (OSError, AttributeError, TypeError):  # no C library to load by name (Windows), or no mincore
        return None
    return libc


_libc = _load_libc()
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux, FreeBSD
_DIRECT_ALIGN = 4096  # offsets, lengths and addresses of direct reads: a multiple of any disk's block size
_MAP_FAILED = ctypes.c_void_p(-1).value
_sync_file_range = getattr(_libc, "sync_file_range", None)  # Linux only
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the dirty pages of the range, do not wait
CAN_START_WRITEBACK = _sync_file_range is not None


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` of ``fd`` from ``offset`` to disk, without waiting
    for it (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; it blocks only while the disk's queue is
    full). A hint, not a durability step: only ``fsync`` makes data durable, so a failure here (a
    filesystem that does not support it) is ignored, and where there is no such call it does nothing."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _opened_path(fd: int) -> str | None:
    """The path the kernel resolved for ``fd`` (Linux), None where it cannot say."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _fill(fd: int, piece: memoryview, at: int, end: int, path: Path) -> None:
    """Fill ``piece`` from file offset ``at`` (a read of a range that ends at ``end``)."""
    done = 0
    while done < len(piece):
        n = os.preadv(fd, [piece[done:]], at + done)
        if n == 0:
            raise StorageError(f"{path}: object ends at {at + done} bytes, {end - at - done} more expected")
        done += n
