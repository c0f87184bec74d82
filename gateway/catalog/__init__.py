"""The gateway's own campaign catalog, for plain OpenRTB requests (docs/catalog.md).

model          the JSONL schema: header, campaigns, creatives, targeting
loader         bytes/path -> validated Catalog, CatalogError naming line and field
bitset         packed uint64 bitsets, the index's storage
index          the immutable inverted index, built once per catalog version
retrieval      CatalogRetriever: the CandidateSource over the current index
reloader       CatalogHolder, CatalogReloader and the file source: hot reload
redis_catalog  the Redis source and `python -m gateway seed-catalog`
"""
