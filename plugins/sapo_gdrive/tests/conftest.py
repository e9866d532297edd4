"""test_folder.py's swarm helpers (oracle/recorder backends, thread runner), importable by the other tests.

Tests run with ``--import-mode=importlib``, so test modules cannot import each other by name;
this loads test_folder.py once, as ``sapo_gdrive_test_folder``, before any test module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "sapo_gdrive_test_folder" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("sapo_gdrive_test_folder", Path(__file__).with_name("test_folder.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
