"""Segments: named per-tenant actor sets, stored durably and evaluated at query time."""
