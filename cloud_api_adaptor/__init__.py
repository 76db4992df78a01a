"""Peer-pods cloud API adaptor for Confidential Containers, in Python.

Provider distributions use only the public contract: ``cloud_api_adaptor.provider``
(the ABC and its dataclasses), ``cloud_api_adaptor.errors``,
``cloud_api_adaptor.options`` (their settings class) and ``cloud_api_adaptor.aio``
(``shielded``, ``KeyedLocks``), plus ``cloud_api_adaptor.testing`` in their tests.
``make lint`` checks this (import-linter).  Importing the package itself loads
nothing else, so the VM-side programs stay small.
"""

__version__ = "0.1.0"
