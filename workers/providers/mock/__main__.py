"""``python -m workers.providers.mock``: the mock provider on gevent, for hundreds of streams."""

from gevent import monkey

# Before anything imports socket, ssl or threading: every stream is a cheap greenlet.
monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

from workers.providers.mock.behaviour import MockState  # noqa: E402
from workers.providers.mock.server import SOCKET_KEY, create_app  # noqa: E402


class _Handler(WSGIHandler):
    """Hands the raw socket to the app so faults can drop it and streams can see it close."""

    def handle(self) -> None:
        # Every token is a small write; Nagle plus delayed ACKs would hold each ~40 ms.
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        env[SOCKET_KEY] = self.socket
        return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.providers.mock", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("CHORUS_MOCK_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CHORUS_MOCK_PORT", 8100)))
    parser.add_argument(
        "--speed",
        type=float,
        default=float(os.environ.get("CHORUS_MOCK_SPEED", "1") or 1),
        help="divide every delay by this factor (10 = ten times faster)",
    )
    args = parser.parse_args(argv)
    app = create_app(MockState(speed=args.speed))
    # log=None: no access log on the hot path; errors still go to stderr.
    server = WSGIServer((args.host, args.port), app, log=None, handler_class=_Handler, backlog=2048)
    gevent.signal_handler(signal.SIGTERM, server.stop, timeout=1)
    gevent.signal_handler(signal.SIGINT, server.stop, timeout=1)
    print(f"chorus mock provider on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
