"""Rollups: pre-aggregations declared in the catalog, kept exact under CDC, routed to by queries."""
