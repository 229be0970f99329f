"""`trickles bench`: Trickles against Linux TCP in a namespace testbed, measured from captures."""
