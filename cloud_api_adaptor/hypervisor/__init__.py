"""The Kata remote-hypervisor service and the sandbox lifecycle behind it."""
