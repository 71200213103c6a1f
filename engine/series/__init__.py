"""Finding, grouping, ordering and decoding CT series (header-first, pixels on demand)."""
