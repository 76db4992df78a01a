"""Whether a VM size can run a pod VM here: offered in the region, open to the subscription, CVM capable."""

from __future__ import annotations

from collections.abc import Mapping

from caa_provider_azure.arm import SkuView


def size_problem(skus: Mapping[str, SkuView], size: str, disable_cvm: bool) -> str:
    """Why ``size`` cannot run a pod VM here ("" if it can)."""
    sku = skus.get(size.lower())
    if sku is None:
        return f"VM size {size} is not offered in this region"
    if sku.restricted:
        return f"VM size {size} is not available to this subscription in this region"
    if not disable_cvm and not sku.confidential:
        return (
            f"VM size {size} cannot run confidential VMs "
            "(use a DCas_v5 or DCes_v6-style size, or set DISABLECVM)"
        )
    return ""
