"""Interop tests against Go peers built from containerd/ttrpc v1.2.7 (see build.sh)."""
