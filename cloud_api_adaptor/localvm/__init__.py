"""The ``local`` provider, the embedded default: each pod VM is a process tree on this machine.

As root (netns mode) a VM has its own network, mount and UTS namespaces, joined
to the daemon's namespace by a veth pair numbered from ``LOCAL_VM_SUBNET``, so
the VM-side programs run with their real default paths; without root (loopback
mode) it has its own 127.x.y.z address and a directory of its own.  Either way
it gets its userdata from a cidata directory, as libvirt's cidata ISO delivers
it, and runs ``process-user-data``, an agent (``LOCAL_AGENT_COMMAND``, by default
the built-in development agent, a stand-in for kata-agent) and
``agent-protocol-forwarder``.  VMs outlive the daemon; their records on disk
let a restarted daemon find them again.  In netns mode the provider also owns
the node's end of the pod network tunnel (``tunnel_endpoint``: the last usable
address of ``LOCAL_VM_SUBNET``, on ``lo`` while any VM exists), so a pod's
VXLAN runs over the VMs' own subnet, never the machine's real interfaces.

Layout: ``config`` (options), ``addressing`` and ``records`` (sans-I/O-ish
state), ``procs`` (process identity and stopping), ``netns`` (namespaces,
mounts, veth), ``guest`` (the launcher inside each VM), ``provider``,
``checks`` (verify), ``plugin`` (the entry point).
"""
