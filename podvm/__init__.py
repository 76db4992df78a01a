"""The pod VM image recipe: ``python -m podvm.build`` (``make podvm``); see docs/podvm.md."""
