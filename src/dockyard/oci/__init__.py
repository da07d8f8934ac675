"""Typed models and constants of the OCI formats. Pure: no I/O."""
