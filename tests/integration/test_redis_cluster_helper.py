"""The cluster fixture's own start-up: a node whose port was taken after it was chosen moves to new ports
(the race behind one CI failure, "node ... did not start")."""

from __future__ import annotations

import socket

import pytest

from tests.integration.redis_cluster import RedisCluster, command

pytestmark = pytest.mark.integration


def test_a_node_whose_port_is_taken_starts_on_new_ports() -> None:
    cluster = RedisCluster(primaries=3, replicas=0)
    squatted = cluster.nodes[1].port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", squatted))
        squatter.listen()
        with cluster:
            assert cluster.nodes[1].port != squatted
            assert len({port for node in cluster.nodes for port in (node.port, node.bus_port)}) == 6
            for node in cluster.nodes:
                assert "cluster_state:ok" in command(node.client(), "CLUSTER", "INFO")
