"""A faithful local Codat for tests, benchmarks and the demo.

Company and connection endpoints, the hosted Link page, signed webhook deliveries with
retries, and ``/_sandbox`` controls, all in memory. Build one with :func:`create_sandbox_app`.
"""

from service.sandbox.app import create_sandbox_app
from service.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_sandbox_app"]
