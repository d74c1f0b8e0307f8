"""Write tests/reference/<case>.safetensors: the logits of every case in tests/reference_cases.py.

Run once, from the repository root, when a change to a model's function is intended (and say why in the
commit):
    PYTHONPATH=src python scripts/make_reference_outputs.py [--check]
The files hold outputs only (a few KB each); the weights come from each case's seeded initialisation.
The outputs of 2026-11-28 (main c6b5712) were checked against the authors' ParNet code: with their weights
mapped one to one, nondeep's ParNet-S computes the same function bit for bit (issue 20).
--check compares instead of writing and exits 1 on a difference (the test does the same).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_cases import CASES, REFERENCE_DIR, outputs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored files, write nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    REFERENCE_DIR.mkdir(exist_ok=True)
    failed = 0
    for case in CASES:
        logits = outputs(case).contiguous()
        path = REFERENCE_DIR / f"{case.name}.safetensors"
        if args.check:
            stored = load_file(path)["logits"]
            err = (logits - stored).abs().max().item() / stored.abs().max().item()
            print(f"{case.name}: max error / output scale = {err:.2e}")
            failed += err > 1e-5
        else:
            save_file({"logits": logits}, path, metadata={
                "case": repr(case), "torch": torch.__version__, "date": dt.date.today().isoformat(),
                "command": "PYTHONPATH=src python scripts/make_reference_outputs.py"})
            print(f"wrote {path} {tuple(logits.shape)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
