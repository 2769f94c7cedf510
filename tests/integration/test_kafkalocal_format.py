"""The local Kafka script against Kafka's real storage tool: a cluster id that begins with '-' (one
random id in 64 does) formats like any other."""
import subprocess

import pytest

from tests.support import free_port, load_kafkalocal

pytestmark = pytest.mark.integration


def test_a_cluster_id_starting_with_a_dash_formats(tmp_path):
    kafkalocal = load_kafkalocal()
    cluster_id = "-" + "A" * 21
    ports = {"PLAINTEXT": free_port(), "CONTROLLER": free_port()}
    props = tmp_path / "server.properties"
    props.write_text(kafkalocal.server_properties(tmp_path, 1, ports, f"1@127.0.0.1:{ports['CONTROLLER']}", None))
    result = subprocess.run(kafkalocal.java(kafkalocal.CLUSTER_JVM) + kafkalocal.format_command(props, cluster_id),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"cluster.id={cluster_id}" in (tmp_path / "data" / "meta.properties").read_text().splitlines()
