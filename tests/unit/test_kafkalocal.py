"""The local Kafka scripts' own checks, without starting a JVM: cluster ids that command lines
cannot mistake for options, and a clear refusal when another process holds a port."""
import base64
import signal
import socket

import pytest

from tests.support import free_port, load_kafkacluster, load_kafkalocal

kafkalocal = load_kafkalocal()
DASH_FIRST = bytes([0xF8]) + bytes(15)  # URL-safe base64 of this starts with '-'


def test_a_random_cluster_id_never_starts_with_a_dash():
    assert base64.urlsafe_b64encode(DASH_FIRST).decode().startswith("-")
    draws = iter([DASH_FIRST, bytes(range(16))])
    cluster_id = kafkalocal.new_cluster_id(lambda n: next(draws))
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22 and base64.urlsafe_b64decode(cluster_id + "==") == bytes(range(16))


def test_the_format_command_binds_the_id_to_its_option(tmp_path):
    command = kafkalocal.format_command(tmp_path / "server.properties", "-starts-with-a-dash-xx")
    assert "--cluster-id=-starts-with-a-dash-xx" in command
    assert "-t" not in command


def test_start_refuses_a_port_another_process_listens_on(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        held = other.getsockname()[1]
        with pytest.raises(SystemExit) as refused:
            kafkalocal.start(tmp_path / "kafka", free_port(), held, free_port(), tmp_path)
    message = str(refused.value)
    assert f"port {held} (SSL listener) is already in use" in message
    assert not (tmp_path / "kafka" / "state.json").exists(), "nothing may be started or recorded"


def test_a_stale_state_file_does_not_make_a_held_port_look_like_our_broker(tmp_path):
    home = tmp_path / "kafka"
    home.mkdir()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        held = other.getsockname()[1]
        # What an earlier run left behind: a pid that is gone, the port now someone else's.
        (home / "state.json").write_text(f'{{"pid": 999999999, "port": {held}, "ports": {{"PLAINTEXT": {held}}}}}')
        with pytest.raises(SystemExit, match=f"port {held} \\(PLAINTEXT listener\\) is already in use"):
            kafkalocal.start(home, held, None, free_port(), None)


def test_sasl_listeners_take_every_mechanism_and_only_ssl_requires_a_client_certificate(tmp_path):
    ports = {"PLAINTEXT": 1, "SSL": 2, "CONTROLLER": 3, "SASL_SSL": 4, "SASL_PLAINTEXT": 5}
    props = dict(line.split("=", 1) for line in
                 kafkalocal.server_properties(tmp_path, 1, ports, "1@127.0.0.1:3", tmp_path).splitlines())
    assert props["sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    assert props["ssl.client.auth"] == "required" and props["listener.name.sasl_ssl.ssl.client.auth"] == "none"
    for listener in ("sasl_ssl", "sasl_plaintext"):
        assert 'user_bridge="bridge-secret"' in props[f"listener.name.{listener}.plain.sasl.jaas.config"]
        assert "ScramLoginModule" in props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"]
    assert props["num.partitions"] == "6" and "min.insync.replicas" not in props


def test_cluster_nodes_replicate_everything_three_times(tmp_path):
    kafkacluster = load_kafkacluster()
    ports = kafkacluster.fixed_ports(3, 19092)
    assert ports[2] == {"PLAINTEXT": 19102, "SSL": 19103, "CONTROLLER": 19104, "SASL_SSL": 19105,
                        "SASL_PLAINTEXT": 19106}
    props = dict(line.split("=", 1) for line in kafkalocal.server_properties(
        tmp_path, 2, ports[2], "1@a:1,2@a:2,3@a:3", tmp_path, replicas=3).splitlines())
    assert (props["default.replication.factor"], props["min.insync.replicas"], props["num.partitions"]) == ("3", "2", "12")
    assert props["offsets.topic.replication.factor"] == props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"


def test_stopping_a_node_that_is_not_running_is_harmless(tmp_path, capsys):
    kafkalocal.stop(tmp_path, signal.SIGKILL)
    assert "not running" in capsys.readouterr().out
