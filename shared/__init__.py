"""Code imported by both the API and the workers: settings, registry, schemas, storage."""
