"""Benchmarks, the gateway simulator and fault drills (not part of the installed package). The
processes they run (Kafka, bridges, HAProxy) come from tests.support, shared with the test suite."""

TOKEN = "drill-token"  # the service token the drills' and benchmarks' bridges accept
