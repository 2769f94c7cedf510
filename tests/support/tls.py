"""TLS material for the harness: the project's own development certificate script."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .paths import ROOT


def make_tls(out: Path) -> Path:
    """A throw-away CA and a localhost certificate (deploy/tls/make-dev-certs.sh); returns `out`."""
    subprocess.run([str(ROOT / "deploy" / "tls" / "make-dev-certs.sh"), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out
