"""The daemon's side of Kubernetes: PeerPod resources, node capacity, pod events.

Only the composition root (``cloud_api_adaptor.daemon``) imports this package, and only
when ``KUBERNETES_API`` is on (or auto inside a cluster); the sandbox lifecycle knows it
only as ``hypervisor.ports.SandboxHooks``.  docs/kubernetes.md explains the choices.
"""
