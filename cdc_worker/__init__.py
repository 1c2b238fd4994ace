"""Replication worker: Debezium change events from Kafka into the ClickHouse replicas.

``decoder`` turns Kafka records into typed events (pure), ``batch`` gathers them, ``worker``
writes them and commits offsets after the write, ``sync_tracker`` knows how fresh each table is,
``metrics`` exposes it all to Prometheus, ``cli`` is the ``analytics`` command with ``worker``.
"""
