"""The `dockyard` command: Docker-compatible verbs over the engine. Thin: parse, call, print."""
