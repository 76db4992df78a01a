"""Test support shipped with the package: a fake provider, the provider contract, a fault proxy.

``fake_provider`` and ``faultproxy`` use only the standard library, so the
``fake`` entry point works in a production install (benchmarks, demos).
``contract`` imports pytest and is only for test suites: import it explicitly.
"""
