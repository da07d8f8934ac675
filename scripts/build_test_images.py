"""Build (or reuse) the test images in the cache and print their paths as JSON.

`make images` runs this; the work is in scripts/test_images.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, only scripts/ is on sys.path; the repo root makes `scripts` importable
# under the same name that mypy and the tests use.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.test_images import main

if __name__ == "__main__":
    sys.exit(main())
