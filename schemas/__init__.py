"""Avro schemas of playledger's events and the one codec every part uses."""
