"""Numbers both ends of the node-to-VM link must agree on (the Go version's defaults).

A neutral module: the daemon, the pod-network code and the VM-side programs all
import it, and it imports nothing.
"""

from __future__ import annotations

#: TCP port of agent-protocol-forwarder in the pod VM
FORWARDER_PORT = 15150
#: UDP port of the pod network's VXLAN tunnel
VXLAN_PORT = 4789
#: first VXLAN network identifier handed to a sandbox
VXLAN_MIN_ID = 555000
