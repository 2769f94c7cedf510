"""A real file system of its own for the spool, and the real faults volumes have: a small ext4
image on a loop device, mounted in a temporary directory; frozen with fsfreeze (every write waits,
as on a hung network disk), filled to ENOSPC, and turned read-only by the kernel after an error
(ext4's `errors=remount-ro`, triggered through its sysfs `trigger_fs_error`: an administrator's
`remount,ro` is refused while a process has files open for writing, the kernel's own is not).
That last one is over only once the volume is unmounted, checked and mounted again, so whoever
has files open on it must start again. Needs root, mkfs.ext4, e2fsck, mount and fsfreeze;
`available()` says why not when they are missing."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

TOOLS = ("mkfs.ext4", "e2fsck", "mount", "umount", "fsfreeze")


def available() -> str:
    """"" when loop-mounted volumes can be made here, else why not."""
    if os.geteuid() != 0:
        return "mounting a loop device needs root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}" if missing else ""


def run(*command: str, ok: tuple[int, ...] = (0,)) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode not in ok:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)


class LoopVolume:
    """`size_mb` of ext4 mounted at `mount`; `close()` undoes everything (thaws, unmounts, deletes)."""

    def __init__(self, workdir: Path, size_mb: int = 64) -> None:
        self.image = workdir / "volume.img"
        self.mount = workdir / "volume"
        self.size_mb = size_mb
        self._frozen = False
        self._filler = self.mount / "filler"

    def __enter__(self) -> LoopVolume:
        self.mount.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as image:
            image.truncate(self.size_mb << 20)
        run("mkfs.ext4", "-q", "-F", "-m", "0", str(self.image))
        self._mount()
        return self

    def _mount(self) -> None:
        run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mount))

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def freeze(self) -> None:
        """Every write (and fsync) to it waits from now on until `thaw`."""
        run("fsfreeze", "--freeze", str(self.mount))
        self._frozen = True

    def thaw(self) -> None:
        if self._frozen:
            run("fsfreeze", "--unfreeze", str(self.mount))
            self._frozen = False

    def fill(self) -> None:
        """Take every free block (root's reserve included: the image has none), so writes fail
        with ENOSPC."""
        with open(self._filler, "ab") as filler:
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                while True:
                    filler.write(chunk)
                    filler.flush()
            with contextlib.suppress(OSError):
                os.fsync(filler.fileno())

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def break_to_read_only(self) -> None:
        """An ext4 error: the kernel makes the file system read-only at once, open files or not."""
        device = Path(subprocess.run(["findmnt", "-no", "SOURCE", str(self.mount)], capture_output=True, text=True,
                                     check=True).stdout.strip()).name
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("fault test\n")

    def repair(self) -> None:
        """Unmount, check (errors corrected: e2fsck exits 1) and mount again; nothing may have it open."""
        run("umount", str(self.mount))
        run("e2fsck", "-f", "-y", str(self.image), ok=(0, 1))
        self._mount()

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.thaw()
        with contextlib.suppress(subprocess.SubprocessError):
            run("umount", str(self.mount))
        self.image.unlink(missing_ok=True)
