"""Replication worker: Debezium change events from Kafka into ClickHouse replicas.

The worker arrives with the replication issue; until then this package only reserves its place.
"""
