"""WSGI entry point for gunicorn: ``gunicorn -c python:ringlb_balancer.gunicorn_conf ringlb_balancer.wsgi:app``."""

from ringlb_balancer.app import create_app

app = create_app()
