"""The subscriber library stands alone: the package without extras needs aiokafka and orjson only,
and bridge.consumer imports with none of the server's dependencies present."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("starlette", "uvicorn", "uvloop", "httptools", "prometheus_client", "msgpack")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_without_extras_only_the_subscribers_dependencies_are_required():
    names = {requirement.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip().lower()
             for requirement in project()["dependencies"]}
    assert names == {"aiokafka", "orjson"}
    server = " ".join(project()["optional-dependencies"]["server"]).lower().replace("-", "_")
    assert all(name in server for name in SERVER_ONLY)


def test_the_consumer_imports_when_the_server_dependencies_are_missing():
    """A child interpreter in which importing any server dependency fails, as in an environment
    where they were never installed."""
    blocker = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {SERVER_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, Missing())
from bridge.consumer import AgentEvent, AgentEventConsumer
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r})
assert not loaded, loaded
try:
    import starlette
except ModuleNotFoundError:
    print("ok")
"""
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
