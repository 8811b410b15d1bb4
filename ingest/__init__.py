"""Ingestion: the gateway that accepts play events and the Pub/Sub plumbing behind it."""
