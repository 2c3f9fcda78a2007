"""The Dagster webserver serves the asset graph (what `dagster dev` shows a user)."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from personc_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def webserver(dagster_home: Path, out_dir: Path):
    """A Dagster webserver on 127.0.0.1 over ``dagster_home``; yields its port once the graph is served."""
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), PERSONC_OUT_DIR=str(out_dir))
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", str(ROOT / "workspace.yaml"),
                             "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if graphql(port, "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("webserver did not serve the asset graph within 120 s")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_webserver_lists_the_asset_graph(tmp_path):
    # why: users materialize from the UI; the graph must load in the webserver's code server
    with webserver(tmp_path / "home", tmp_path / "out") as port:
        nodes = graphql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } description } }")[
            "data"]["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert keys == {k.to_user_string() for k in defs.resolve_all_asset_keys()}
        deps = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
        assert deps["guard_verdicts"] >= {"generated_candidates", "embedding_indexes"}
        assert all(n["description"] for n in nodes), "each asset's docstring is its description in the UI"
