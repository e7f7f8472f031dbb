"""Security test fixtures."""

from tests.auth.helpers import secure_client, secure_services

__all__ = ["secure_client", "secure_services"]
