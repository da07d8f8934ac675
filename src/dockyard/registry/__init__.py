"""The OCI distribution registry: server (server.py and below) and client."""
