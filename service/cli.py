"""The ``codat-hooks`` command: serve, migrate, and the on-call tools.

Settings are read once here, in each command, never at import.
"""

from __future__ import annotations

import sys

import click

from service.errors import ConfigError
from service.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


_SERVERS = ("serve", "worker", "sandbox", "demo")  # their output is logs, or our own styling


@click.group()
@click.version_option(package_name="codat-hooks")
@click.pass_context
def main(ctx: click.Context) -> None:
    """codat-hooks: Codat Bill Pay onboarding and connection state, kept from webhooks."""
    if ctx.invoked_subcommand not in _SERVERS:
        from service.terminal import guard_output
        guard_output()  # what the on-call commands print comes from webhooks and API callers


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--migrate/--no-migrate", default=None,
              help="Apply migrations first (default: on for SQLite, off for PostgreSQL, where "
                   "a separate `codat-hooks db upgrade` step runs them once for all replicas).")
@click.option("--reuse-port", is_flag=True,
              help="Share the port with other `serve` processes of this machine "
                   "(SO_REUSEPORT): the kernel spreads connections across them, one core each.")
def serve(host: str, port: int, migrate: bool | None, reuse_port: bool) -> None:
    """Run the receiver and query API (uvicorn, httptools, uvloop)."""
    from service.app import create_app
    from service.logs import configure_logging
    from service.migrate import upgrade
    from service.serving import serve_forever

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if migrate if migrate is not None else settings.database_url.startswith("sqlite"):
        upgrade(settings.database_url)
    try:
        serve_forever(app, settings.connection_limits, host=host, port=port,
                      refusals=app.state.refusals, timeout_graceful_shutdown=20,
                      proxy_headers=True, reuse_port=reuse_port)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--id", "worker_id", default=None, help="Worker id in logs and leases "
              "(default host:pid).")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="Interface of the status port.")
@click.option("--port", default=None, type=int,
              help="Serve /healthz and /metrics on this port (default: no status port).")
def worker(worker_id: str | None, host: str, port: int | None) -> None:
    """Run the follow-up worker (several may share one PostgreSQL database)."""
    import asyncio

    from service.logs import configure_logging
    from service.worker_process import run_worker

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        settings.codat_api_key_value  # noqa: B018 - fail fast, naming the variable
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    asyncio.run(run_worker(settings, worker_id=worker_id, host=host, port=port))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8100, show_default=True, type=int)
@click.option("--webhook-url", default="http://127.0.0.1:8000/webhooks/codat", show_default=True,
              help="Where to deliver webhooks ('' to only record them).")
@click.option("--secret", envvar="SANDBOX_WEBHOOK_SECRET", default=None,
              help="whsec_... to sign with (default: the first of CODAT_WEBHOOK_SECRETS).")
@click.option("--api-key", envvar="SANDBOX_API_KEY", default=None,
              help="The API key to accept (default: CODAT_API_KEY).")
def sandbox(host: str, port: int, webhook_url: str, secret: str | None,
            api_key: str | None) -> None:
    """Run the sandbox: a local Codat with a Link page and signed webhooks, on loopback."""
    import uvicorn

    from service.sandbox import SandboxConfig, create_sandbox_app

    settings = _settings()
    try:
        secret = secret or settings.webhook_secrets[0].value
        api_key = api_key or settings.codat_api_key_value
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (or pass --secret / --api-key)") from None
    config = SandboxConfig(api_key=api_key, webhook_secret=secret,
                           webhook_url=webhook_url or None, public_url=f"http://{host}:{port}")
    click.echo(f"sandbox Codat on http://{host}:{port}, delivering to {webhook_url or 'nowhere'}")
    uvicorn.run(create_sandbox_app(config), host=host, port=port, log_level="warning")


@main.command()
@click.option("--database-url", default=None,
              help="Run against this database instead of a fresh SQLite file.")
@click.option("--platform-key", default="qhyg", show_default=True)
def demo(database_url: str | None, platform_key: str) -> None:
    """The whole onboarding flow against the local sandbox Codat, end to end."""
    import asyncio

    from service.demo import DemoFailed, run_demo

    try:
        asyncio.run(run_demo(database_url=database_url, platform_key=platform_key))
    except DemoFailed as exc:
        raise click.ClickException(f"demo failed: {exc}") from None


@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply schema migrations (run once before starting replicas on PostgreSQL)."""
    from service.db import redact_url
    from service.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database {redact_url(settings.database_url)} is at {revision}")


def _register() -> None:
    from service.feed_cli import events
    from service.oncall_cli import register
    register(main)
    main.add_command(events)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
