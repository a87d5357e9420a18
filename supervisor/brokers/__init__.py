"""Brokers: the supervisor validates and performs an operation in one step."""
