"""The OCI runtime: a library the engine calls in process; `dockyard-runtime` is its thin CLI."""
