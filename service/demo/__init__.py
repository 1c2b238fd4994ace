"""The demo dataset: a deterministic, realistic CRM and billing history, and its loader."""
