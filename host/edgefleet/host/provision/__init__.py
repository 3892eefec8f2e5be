"""Provisioning: the fleet CA, certificates, signing keys, broker config and device bundles.

- ``_provision``: ``init_fleet``, ``provision_device``, ``revoke_device``, signing-key rotation;
- ``_restart``: ``restart_broker``, so a revocation ends live sessions (``revoke --apply``);
- ``_pki``: X.509 and key-file helpers;
- ``_brokeruser``: the account mosquitto runs as, and its access to the fleet directory;
- ``_brokerconf``: the deploy/ templates rendered (mosquitto.conf, ACL, agent.toml);
- ``_bundle``: the device bundle tarball;
- ``_wheels``: the agent's wheels for the bundle, a wheelhouse of their dependencies.
"""

from __future__ import annotations

from edgefleet.host.provision._brokerconf import (
    deploy_files,
    render_acl,
    render_agent_config,
    render_mosquitto_conf,
)
from edgefleet.host.provision._brokeruser import (
    BrokerAccess,
    grant_broker_access,
    set_broker_user,
)
from edgefleet.host.provision._bundle import write_bundle
from edgefleet.host.provision._provision import (
    activate_signing_key,
    init_fleet,
    load_signing_key,
    provision_device,
    refresh_crl,
    retire_signing_key,
    revoke_device,
    rotate_signing_key,
    signing_key_id,
    trusted_key_files,
)
from edgefleet.host.provision._restart import Restarted, restart_broker
from edgefleet.host.provision._wheels import DEVICE_PLATFORMS, agent_wheels, fill_wheelhouse

__all__ = [
    "DEVICE_PLATFORMS",
    "BrokerAccess",
    "Restarted",
    "activate_signing_key",
    "agent_wheels",
    "deploy_files",
    "fill_wheelhouse",
    "grant_broker_access",
    "init_fleet",
    "load_signing_key",
    "provision_device",
    "refresh_crl",
    "render_acl",
    "render_agent_config",
    "render_mosquitto_conf",
    "restart_broker",
    "retire_signing_key",
    "revoke_device",
    "rotate_signing_key",
    "set_broker_user",
    "signing_key_id",
    "trusted_key_files",
    "write_bundle",
]
