"""The example scripts with a command line still start: each answers `--help` (their imports from the package
and from each other resolve, their parsers build). A refactor once left calibrate_acceptance.py importing
functions that no longer existed."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(path for path in EXAMPLES.glob("*.py") if "argparse" in path.read_text())

# One process for all scripts (the package imports once): each runs as `python examples/NAME.py --help` would.
RUNNER = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv, sys.path[0] = [path, "--help"], str(__import__("pathlib").Path(path).parent)
    try:
        runpy.run_path(path, run_name="__main__")
        failed.append(f"{path}: --help did not exit")
    except SystemExit as exit:
        if exit.code not in (0, None):
            failed.append(f"{path}: exit {exit.code}")
    except Exception as error:
        failed.append(f"{path}: {type(error).__name__}: {error}")
print("FAILED:" + " | ".join(failed) if failed else "ALL OK")
"""


def test_every_example_script_answers_help():
    assert len(SCRIPTS) >= 7, SCRIPTS
    done = subprocess.run([sys.executable, "-c", RUNNER, *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ALL OK", done.stdout[-3000:]
