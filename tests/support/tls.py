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


def certificate_for(tls_dir: Path, name: str, out: Path, also: str = "") -> Path:
    """A certificate for `name` (and the subjectAltName entries `also`, such as ",IP:127.0.0.1")
    signed by the CA of `tls_dir` (its ca.key, as make_tls leaves it), in make_tls's file names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ext").write_text(f"subjectAltName=DNS:{name}{also}\nbasicConstraints=CA:FALSE\n"
                             "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", f"/CN={name}", "-keyout", out / "server.key", "-out", out / "server.csr"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", out / "server.csr", "-CA", tls_dir / "ca.pem",
                    "-CAkey", tls_dir / "ca.key", "-CAcreateserial", "-CAserial", out / "ca.srl", "-days", "2",
                    "-extfile", out / "ext", "-out", out / "server.pem"], check=True, capture_output=True)
    (out / "ca.pem").write_bytes((tls_dir / "ca.pem").read_bytes())
    return out
