"""Transports: the simulator now; UDP and raw sockets build on the same engines."""
