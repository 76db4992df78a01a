"""A stateful fake of the Compute Engine v1 API (and the bits of Resource Manager and OAuth the
provider uses), served over HTTP on 127.0.0.1 for the real google-cloud-compute client.

``discovery`` validates request bodies against Google's own compute v1 discovery
document; ``auth`` makes service-account keys and verifies what google-auth signs;
``server`` holds the state and answers like Compute Engine, refusals included.
"""
