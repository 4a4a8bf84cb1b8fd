"""The thin Flask API: authenticate, validate, reserve, enqueue, relay events."""
