"""ASGI entry point for multi-worker uvicorn: ``uvicorn fhir_server.asgi:app``."""

from fhir_server.main import create_app

app = create_app()
