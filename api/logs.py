"""The API process's logging: every handler escapes what callers sent (``shared.loglines``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask.logging import default_handler
from gunicorn.glogging import Logger as GunicornBaseLogger

from shared.loglines import guard

APP_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def install() -> None:
    """Every record of the API process goes through an escaping handler.

    Without a handler of its own the root logger would fall back to ``logging``'s last
    resort, which no filter can reach; give it one on stderr, in gunicorn's line shape.
    """
    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(APP_FORMAT, DATE_FORMAT))
        root.addHandler(stderr)
    for handler in root.handlers:
        guard(handler)
    guard(default_handler)


class GunicornLogger(GunicornBaseLogger):
    """gunicorn's logger (``--logger-class api.logs.GunicornLogger``) with its error and
    access lines escaped: ``%(U)s``, ``%(q)s`` or a header atom in an operator's access
    format would otherwise write decoded request text as it came."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                guard(handler)
