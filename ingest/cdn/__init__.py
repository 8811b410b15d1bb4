"""The CDN stub: catalog tracks as audio segments, served from points of presence.

``playledger cdn`` (and ``playledger up``) serve every track of the catalog as
segments in each rendition (``media``), from several points of presence with their own
round-trip time and LRU edge cache, an origin behind them, and per-connection
throughput shaping (``server``). ``GET /stats`` counts hits, misses and time to first
byte per PoP and rendition (``edge``).
"""
