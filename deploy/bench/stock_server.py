"""codat-hooks' app under uvicorn's stock httptools protocol, without service/protocol.py's
limits: what ``codat-hooks serve`` ran before issue #11. Only for the benchmark's
``codat-hooks-stock`` variant, to measure what the limits cost (``--variants``)."""

from __future__ import annotations

import argparse

import uvicorn

from service.app import create_app
from service.logs import configure_logging
from service.migrate import upgrade
from service.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    if settings.database_url.startswith("sqlite"):  # as `codat-hooks serve` does
        upgrade(settings.database_url)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop",
                http="httptools", log_config=None, access_log=False,
                timeout_graceful_shutdown=20, proxy_headers=True)


if __name__ == "__main__":
    main()
