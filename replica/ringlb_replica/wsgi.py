"""WSGI entry point for gunicorn: ``gunicorn ringlb_replica.wsgi:app``."""

from ringlb_replica.app import create_app

app = create_app()
