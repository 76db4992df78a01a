"""The cluster controller (``cloud-api-adaptor controller``): no VM outlives its pod or its node.

One replica at a time works (a coordination.k8s.io Lease, ``leader``).  Each
reconcile period it walks the PeerPods (``peerpods``): one being deleted, or
whose pod or node is gone, has its VM deleted through the same provider plugin
the daemon uses, then its finalizer released.  It also lists the provider's
instances tagged for this cluster and deletes those owned by nodes that no
longer exist, after a grace period (``orphans``).
"""
