"""A service's broker is given every bootstrap server of a comma-separated list, one host each.

Found by the chaos suite: FastStream wraps a string into a one-element list, so aiokafka read
``127.0.0.1:19394,127.0.0.1:19396,127.0.0.1:19398`` as one host and no service could start against a three-broker
cluster (only clients built from ``KafkaConnection.client_kwargs`` split it).
"""

from __future__ import annotations

from vigil_runtime.kafka import bootstrap_servers, make_broker
from vigil_runtime.settings import VigilSettings


def test_a_comma_separated_list_becomes_one_entry_per_broker() -> None:
    assert bootstrap_servers(" 127.0.0.1:1, 127.0.0.1:3,,127.0.0.1:5 ") == ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:5"]
    assert bootstrap_servers("kafka:9092") == ["kafka:9092"]


def test_the_service_broker_connects_to_every_listed_server() -> None:
    settings = VigilSettings(
        kafka_bootstrap_servers="127.0.0.1:1,127.0.0.1:3,127.0.0.1:5",
        kafka_security_protocol="PLAINTEXT",
        development=True,  # no broker and no CA here: the test only reads the arguments the broker would connect with
    )
    broker = make_broker(settings, client_id="test")
    assert broker._connection_kwargs["bootstrap_servers"] == ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:5"]
