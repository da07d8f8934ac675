"""The engine: container lifecycle, logs, the per-container monitor.

`monitor` is the small process that parents a running container (its stdio,
log, exit code and restart policy); `logs` is Docker's json-file log format.
"""
