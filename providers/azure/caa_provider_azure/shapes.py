"""The VM body the provider PUTs, and the limits Azure puts on it.

Everything the VM needs is declared inside its one PUT: the NIC (and public IP,
only with ``USE_PUBLIC_IP``) as ``networkInterfaceConfigurations`` and the OS disk,
each with ``deleteOption=Delete``, so Azure creates them with the VM and removes
them with it; nothing exists outside the VM that could leak.
"""

from __future__ import annotations

import base64
from typing import Any

from caa_provider_azure.config import AzureConfig
from cloud_api_adaptor.provider import CreateRequest

#: Azure refuses a VM whose ``userData`` (base64 text) exceeds 64 KiB ...
USERDATA_B64_LIMIT = 65536
#: ... so at most this many raw bytes
USERDATA_LIMIT = USERDATA_B64_LIMIT // 4 * 3
#: the network API version ``networkInterfaceConfigurations`` are created with (as in Go)
NETWORK_API_VERSION = "2020-11-01"

Json = dict[str, Any]


def encoded_userdata_size(userdata: str) -> int:
    return (len(userdata.encode()) + 2) // 3 * 4


def image_reference(image_id: str) -> Json:
    """``imageReference`` for a gallery image id, a community or a shared gallery id."""
    lowered = image_id.lower()
    if lowered.startswith("/communitygalleries/"):
        return {"communityGalleryImageId": image_id}
    if lowered.startswith("/sharedgalleries/"):
        return {"sharedGalleryImageId": image_id}
    return {"id": image_id}


def throwaway_ssh_key() -> str:
    """An OpenSSH RSA public key whose private half is discarded at once.

    Azure refuses a Linux VM with password login disabled and no SSH key; the Go
    version needs a key file.  Without ``ssh-key-path`` the pod VMs get this key,
    so nobody can log in.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def vm_body(config: AzureConfig, request: CreateRequest, tags: dict[str, str], ssh_key: str) -> Json:
    """The JSON body of the VM PUT (Azure's wire form, camelCase under ``properties``)."""
    name = request.name
    size = request.spec.instance_type or config.instance_size
    image = request.spec.image or config.image_id
    managed_disk: Json = {"storageAccountType": "Premium_LRS"}
    if not config.disable_cvm:
        managed_disk["securityProfile"] = {"securityEncryptionType": "VMGuestStateOnly"}
    os_disk: Json = {
        "name": f"{name}-disk",
        "createOption": "FromImage",
        "caching": "ReadWrite",
        "deleteOption": "Delete",
        "managedDisk": managed_disk,
    }
    if config.root_volume_size:
        os_disk["diskSizeGB"] = config.root_volume_size
    ip_config: Json = {"subnet": {"id": config.subnet_id}, "primary": True}
    if config.use_public_ip:
        ip_config["publicIPAddressConfiguration"] = {
            "name": f"{name}-ip",
            "sku": {"name": "Standard", "tier": "Regional"},
            "properties": {"deleteOption": "Delete", "publicIPAllocationMethod": "Static"},
        }
    nic: Json = {
        "primary": True,
        "deleteOption": "Delete",
        "ipConfigurations": [{"name": f"{name}-ipconfig", "properties": ip_config}],
    }
    if config.nsg_id:
        nic["networkSecurityGroup"] = {"id": config.nsg_id}
    properties: Json = {
        "hardwareProfile": {"vmSize": size},
        "storageProfile": {"imageReference": image_reference(image), "osDisk": os_disk},
        "osProfile": {
            "computerName": name,
            "adminUsername": config.ssh_username,
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {
                    "publicKeys": [
                        {"path": f"/home/{config.ssh_username}/.ssh/authorized_keys", "keyData": ssh_key}
                    ]
                },
            },
        },
        "networkProfile": {
            "networkApiVersion": NETWORK_API_VERSION,
            "networkInterfaceConfigurations": [{"name": f"{name}-net", "properties": nic}],
        },
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
        "userData": base64.b64encode(request.userdata.encode()).decode(),
    }
    if not config.disable_cvm:
        properties["securityProfile"] = {
            "securityType": "ConfidentialVM",
            "uefiSettings": {"secureBootEnabled": config.enable_secure_boot, "vTpmEnabled": True},
        }
    return {"location": config.region, "tags": tags, "properties": properties}
