"""Operator tools: ``bgworker clean`` (expired and orphaned files) and the dead-letter queue."""
