"""Where things are: the repository root, and the push path the gateway posts to."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
