"""`make bench`: throughput and latency of the API next to a bare FastAPI baseline."""
