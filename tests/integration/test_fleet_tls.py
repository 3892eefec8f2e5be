"""Fleet commands against a TLS Mosquitto running the config `edgefleet init` renders."""

from __future__ import annotations

import getpass
import threading

import pytest

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    Ingestor,
    PushPlan,
    SqliteStore,
    close_fleet,
    load_model,
    open_fleet,
    push,
)
from edgefleet.host.provision import init_fleet, provision_device
from support.agent import shared_mnist_model
from support.broker import MosquittoBroker, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleettls")
    port = free_port()
    config = init_fleet(
        root / "fleet",
        broker_url=f"mqtts://localhost:{port}",
        prefix="efx",
        bind_address="127.0.0.1",
        broker_user=getpass.getuser(),
    )
    provision_device(config.root, "tls-dev", groups=["field"])
    broker = MosquittoBroker(root / "mosquitto", port=port)
    broker.start(conf=config.resolve(config.broker_conf))
    yield config
    broker.stop()


def test_push_and_shared_ingestion_work_over_mutual_tls_with_the_fleet_config(
    tls_fleet, tmp_path, tmp_path_factory
):
    model = shared_mnist_model(tmp_path_factory)
    fleet = open_fleet(broker=None, fleet_dir=tls_fleet.root, state_dir=tmp_path, need_key=True)
    try:
        assert fleet.conn.settings.tls
        assert fleet.topics.prefix == "efx"
        # the provisioned device is a known group member before it ever connected
        assert fleet.view.members("field") == ["tls-dev"]
        result = push(fleet, load_model(model.path), PushPlan(group="field"))
        assert result.exit_code == 0
        assert result.targets == ["tls-dev"]
        ingestor = Ingestor(fleet.conn, fleet, SqliteStore(tmp_path / "p.sqlite"))
        ingestor.subscribe(shared=True)  # the host's ACL allows the shared subscription
        stop = threading.Event()
        stop.set()
        ingestor.run(stop=stop)
    finally:
        close_fleet(fleet)


def test_plain_mqtt_against_the_tls_listener_fails_fast_and_says_so(tls_fleet, tmp_path):
    url = tls_fleet.broker_url.replace("mqtts://", "mqtt://")
    with pytest.raises(FleetError, match=r"cannot reach broker|no MQTT answer"):
        open_fleet(broker=url, fleet_dir=tls_fleet.root, state_dir=tmp_path)
