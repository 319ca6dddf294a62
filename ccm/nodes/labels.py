"""Labels a CloudSigma node gets at initialization. Pure functions.

``node.kubernetes.io/instance-type`` encodes the server's size as ``<smp>c-<cpu MHz>mhz-<memory MiB>mib``
(e.g. ``2c-4000mhz-4096mib``): CloudSigma has no named instance types, and this encoding is stable,
readable and a valid label value. Region and zone labels (and their beta twins) carry the location.
Existing labels are never overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cloudsigma.models import Server

INSTANCE_TYPE = "node.kubernetes.io/instance-type"
INSTANCE_TYPE_BETA = "beta.kubernetes.io/instance-type"
REGION = "topology.kubernetes.io/region"
REGION_BETA = "failure-domain.beta.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
ZONE_BETA = "failure-domain.beta.kubernetes.io/zone"

CLOUD_LABEL_PREFIX = "node.cloudsigma.com/"
"""Prefix of the cloud labels (:mod:`ccm.cloudlabels`): the node record keeps every label under it."""
MANAGED_LABELS_ANNOTATION = CLOUD_LABEL_PREFIX + "managed-labels"
"""The cloud labels the CCM set on a node, comma-separated (:mod:`ccm.cloudlabels`): read by the node record."""

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def instance_type(server: Server) -> str | None:
    """``2c-4000mhz-4096mib``, or None when the server object lacks a size field."""
    if not server.smp or not server.cpu or not server.mem or server.smp < 0 or server.cpu < 0 or server.mem < 0:
        return None
    return f"{server.smp}c-{server.cpu}mhz-{server.mem // (1024 * 1024)}mib"


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def desired_labels(server: Server, *, region: str, zone: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    itype = instance_type(server)
    if itype and valid_label_value(itype):
        labels[INSTANCE_TYPE] = itype
        labels[INSTANCE_TYPE_BETA] = itype
    if region and valid_label_value(region):
        labels[REGION] = region
        labels[REGION_BETA] = region
    if zone and valid_label_value(zone):
        labels[ZONE] = zone
        labels[ZONE_BETA] = zone
    return labels


def labels_to_add(current: Mapping[str, str], desired: dict[str, str]) -> dict[str, str]:
    """Only keys the node does not have: an existing label is the operator's or kubelet's decision."""
    return {k: v for k, v in desired.items() if k not in current}
