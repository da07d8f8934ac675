"""Storage: the content store (blobs by digest), snapshots and metadata."""
