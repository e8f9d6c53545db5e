import os
import sys

# tests import their helpers (tiny_models) by module name
sys.path.insert(0, os.path.dirname(__file__))
# keep the engine's log out of the working tree
os.environ.setdefault("FD_LOG_DIR", os.path.join(os.path.dirname(__file__), "..", "log"))
