"""Stateful fakes of the IBM Cloud APIs for tests (never imported by the provider itself).

``server.FakeServer`` serves them on one listener; ``iam.FakeIam`` is the token
endpoint both IBM providers' fakes share; ``platform.FakePlatform`` is Global
Tagging and Global Search; ``vpc.FakeVpc`` is the VPC API.  Each module says
what it does not model.
"""
