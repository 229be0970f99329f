"""Sans-I/O protocol core: no sockets, threads or clocks — time is always an argument."""
