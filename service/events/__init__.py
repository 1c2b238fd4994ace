"""Product events: validation, the group-commit sink, its metrics and the ingestion path."""
