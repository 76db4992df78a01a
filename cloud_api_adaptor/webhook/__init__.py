"""The peer-pods admission webhook: pod resources become VM-size annotations.

``mutation`` is pure (an AdmissionReview in, a JSON patch out); ``server``
serves it over HTTPS with aiohttp; ``certs`` keeps the serving certificate
(its own CA, shared by the replicas through a Secret, or cert-manager's).
"""
