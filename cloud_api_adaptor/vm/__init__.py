"""Code that runs inside the pod VM: process-user-data and agent-protocol-forwarder."""
