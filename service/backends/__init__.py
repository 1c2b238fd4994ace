"""ClickHouse backends behind one interface: the embedded engine (chDB) and, later, a server."""
