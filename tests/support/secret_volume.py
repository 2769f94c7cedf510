"""A directory laid out and changed the way the kubelet lays out and changes a mounted Secret."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


class SecretVolume:
    """A directory laid out as the kubelet lays out a Secret volume: each key is a symbolic link
    through `..data` to a timestamped directory holding the files. `update` does what the kubelet
    does on a change: the new files in a new directory, `..data` re-pointed at it in one rename,
    then the old directory removed."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        self._versions = 0
        root.mkdir(parents=True, exist_ok=True)
        self.update(files)
        for name in files:
            (root / name).symlink_to(Path("..data") / name)

    def path(self, name: str) -> Path:
        return self.root / name

    def update(self, files: dict[str, bytes]) -> None:
        self._versions += 1
        old = (self.root / "..data").resolve() if (self.root / "..data").is_symlink() else None
        version = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self._versions}"
        version.mkdir(mode=0o755)
        for name, content in files.items():
            (version / name).write_bytes(content)
        swap = self.root / "..data_tmp"
        swap.symlink_to(version.name)
        os.replace(swap, self.root / "..data")  # the atomic step
        if old is not None:
            shutil.rmtree(old)
