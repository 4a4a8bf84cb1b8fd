"""Celery workers: call providers, run pipelines, publish every event to Redis."""
