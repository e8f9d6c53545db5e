"""The engine's log: `$FD_LOG_DIR/fastdeploy.log` (default `log/`), as FastDeploy writes it."""
from __future__ import annotations

import logging
import os

_logger: logging.Logger | None = None


def get_logger() -> logging.Logger:
    global _logger
    if _logger is None:
        log_dir = os.environ.get("FD_LOG_DIR", "log")
        os.makedirs(log_dir, exist_ok=True)
        _logger = logging.getLogger("fastdeploy")
        _logger.setLevel(logging.INFO)
        _logger.propagate = False
        handler = logging.FileHandler(os.path.join(log_dir, "fastdeploy.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        _logger.addHandler(handler)
    return _logger
