"""The package reference's quickstart (``book/api/quickstart.md``) runs as printed, and says what it claims: the
metrics line and a verdict for each of the four latent dimensions."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import BOOK, ROOT


def test_the_quickstart_block_runs(tmp_path):
    page = (BOOK / "api" / "quickstart.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", page, flags=re.M | re.S)
    assert len(blocks) == 1, "the quickstart has one code block"
    assert len([line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]) <= 22
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0])
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    first, *table = run.stdout.strip().splitlines()
    assert re.fullmatch(r"AU \d, KL [\d.]+, MI -?[\d.]+, IWAE -?[\d.]+, -ELBO [\d.]+", first), first
    rows = [line for line in table if re.match(r"z\d ", line)]
    assert len(rows) == 4 and all(("identifiable" in r or "borderline" in r or "collapse" in r) for r in rows), table
