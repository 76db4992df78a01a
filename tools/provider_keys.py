"""Configuration keys of providers that have no distribution in this repository yet.

``make deploy-sync`` generates the Helm values, the kustomize env files and
docs/configuration.md from settings classes.  An installed provider plugin's
``settings_class`` is the source of truth; for a provider not written yet, a class
here stands in so the chart and the overlays already
carry their keys (the Go version's names and defaults, so an existing
``peer-pods-cm`` keeps working).  When a provider's distribution lands, its
plugin's settings take over and its class here is deleted.

Secret keys go to the Secret ``peer-pods-secret``, the rest to the ConfigMap
``peer-pods-cm``.  ``required`` marks keys the provider cannot run without;
credentials are never required because workload identity can replace them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Stand-in settings classes by provider name; only providers without a distribution here.
PROVIDER_SETTINGS: Mapping[str, type[Any]] = {}
