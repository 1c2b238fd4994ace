"""Analytics data layer: tenant-safe aggregation queries over ClickHouse replicas, over gRPC."""
