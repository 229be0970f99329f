"""Network services built from the kernel alone: failover, per-packet balancing, anycast.

Replicas that share the master secret can each answer any Trickles packet (PROTOCOL §11), so a
router that only routes — policy routes, fwmarks from an iptables `statistic` match, a route
withdrawn — is enough to move a transfer between them. This package builds those set-ups in
network namespaces (`replicas.py`), runs the demos for Trickles and for Linux TCP
(`scenarios.py`), attributes every packet to the replica that served it from captures taken in
the router (`capture.py`), and writes results, figures and the README table (`report.py`).
"""
