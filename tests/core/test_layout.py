"""The layout rules of DESIGN.md that a refactor could silently break."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_operator_is_the_standard_library_from_the_repository_root():
    code = "import operator, sys; print(operator.__file__); assert hasattr(operator, 'itemgetter')"
    for args in ([sys.executable, "-c", code], [sys.executable, "-m", "pytest", "--version"]):
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    printed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    assert "site-packages" not in printed and str(ROOT) not in printed


def test_operator_folder_is_not_an_importable_package():
    assert not (ROOT / "operator" / "__init__.py").exists()
