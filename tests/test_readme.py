"""The README's `vitc plan` and `vitc config show` commands run as printed: each exits as its
comment says (0 unless `# exit N`), so a documented command never needs a flag the README does not
show. (Its `vitc audit` lines trace every paper model with fvcore, minutes on a loaded 2-core
machine; tests/test_audit.py covers what they print.)"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMAND = r"vitc (?:plan|config show) "


def documented_commands() -> list[tuple[str, int]]:
    """(command, expected exit code) for every such command in README.md, in code blocks and in
    inline code (which may wrap over lines); synopses with placeholders (CONFIG, [..]) left out."""
    text = (ROOT / "README.md").read_text()
    found = []
    for line in text.splitlines():
        if re.match(COMMAND, line):
            command, _, comment = line.partition("#")
            code = re.search(r"exit (\d)", comment)
            found.append((command.strip(), int(code.group(1)) if code else 0))
    for inline in re.findall(rf"`({COMMAND}[^`]+)`", text):
        found.append((" ".join(inline.split()), 0))
    return [(c, code) for c, code in found if "[" not in c and not re.search(r"\b[A-Z_]{3,}\b", c)]


def test_the_readme_documents_such_commands():
    commands = [c for c, _ in documented_commands()]
    assert any(c.startswith("vitc plan configs/in21k/vit_c_36gf.yaml") for c in commands)


@pytest.mark.parametrize("command,code", documented_commands(), ids=lambda v: str(v)[:60])
def test_a_documented_command_runs_as_printed(command, code):
    args = shlex.split(command)[1:]
    result = subprocess.run([sys.executable, "-m", "vitc.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == code, f"{command}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr
