"""A cloud-neutral stand for daemon-level provider tests: a node and pod VMs in namespaces of their own.

``stand.NodeStand`` builds the namespaces and links (nothing routed off the
machine), ``relay.TcpRelay`` lets the node reach a fake cloud served on
loopback, and ``podvm.PodVm`` plays a booted pod VM from the IP and userdata
the fake cloud holds.  Each cloud's tests add their emulator or fake on top
(``tests/integration/aws`` with moto).
"""
