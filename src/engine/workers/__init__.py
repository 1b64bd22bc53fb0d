"""Many workers on one store: the worker loop (`worker`), the runnable index and its leases
(`leases`), the heartbeat that keeps them (`heartbeat`) and a worker's Prometheus metrics
(`metrics`, the optional `metrics` extra).

Import from the modules: the engine itself leases the runs it drives, so this package stays
free of eager imports that would make the two import each other.
"""
