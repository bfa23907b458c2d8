"""A folder written whole or not at all: into a temporary folder beside the target, then renamed into place, so a
crash or Ctrl-C never leaves a half-written model or checkpoint (st/folder.py save, run/resume.py checkpoints).

Fault injection for the crash tests: MINILM_FAULT=kill:NAME:N kills this process with SIGKILL while it saves a folder
named NAME (e.g. step-0000004), once N of its files are written and synced but before the folder is renamed into
place; MINILM_FAULT=disk-full:NAME:N raises OSError(ENOSPC) there instead, as a full disk would.
"""
import contextlib
import errno
import os
import pathlib
import shutil
import signal
import tempfile


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a fresh temporary folder; on success it replaces `path`. A crash or Ctrl-C inside the block leaves
    `path` as it was (the temporary folder is removed). An existing `path` is moved aside, the new folder renamed
    in, then the old one deleted, so at every instant `path` is either the old or the new complete folder
    (except for the instant between the two renames, when only `path`.old-* exists)."""
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        synced = 0
        for root, _, files in os.walk(tmp):  # make the bytes durable before the rename publishes them
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
                synced += 1
                inject_fault(path.name, synced)
        for root, dirs, files in os.walk(tmp):  # the temporary folder was private (0700); the result is not
            for name in files:
                usual_mode(os.path.join(root, name))
            for name in dirs:
                usual_mode(os.path.join(root, name), folder=True)
        usual_mode(tmp, folder=True)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def usual_mode(path, folder: bool = False) -> None:
    """The permissions a plain open() or mkdir() would have given (0666 or 0777 less the umask): files written
    under a temporary name (mkdtemp makes 0700 folders, some writers 0600 files) end readable by whoever may read
    the folder they are in, as any other file the user makes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def inject_fault(name: str, files: int) -> None:
    """The MINILM_FAULT test hook (see the module docstring); does nothing unless it names this folder and count."""
    fault = os.environ.get("MINILM_FAULT", "")
    if fault == f"kill:{name}:{files}":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"disk-full:{name}:{files}":
        raise OSError(errno.ENOSPC, "No space left on device")
