"""mailbridge: e-mail to ticket ingestion for a Spanish-speaking support desk."""

__version__ = "0.1.0"
