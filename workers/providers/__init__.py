"""Provider adapters, one folder each, behind the ``Adapter`` protocol in ``base.py``."""
