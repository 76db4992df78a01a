"""A stateful fake Azure Resource Manager (and Entra token endpoint) over HTTPS, for the provider tests."""

from .server import FakeArm
from .state import ArmState

__all__ = ["ArmState", "FakeArm"]
