"""STAND-IN for Coral's edgetpu_compiler (which cannot be installed here), used by tests only.

It follows the compiler's documented contract, not its internals: the same flags
(-s/--show_operations, -o/--out_dir, -t/--timeout_sec), the outputs
<name>_edgetpu.tflite and <name>_edgetpu.log in the output folder, the stdout summary
with the "Operator Count Status" table, exit 0 even when nothing maps, and a non-zero
exit for a file that is not a model. Which ops "map" is decided by edgefleet's own
pre-check, and the output model is a copy of the input (no real Edge TPU code).
"""

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

from edgefleet.host.quantize import precheck
from edgefleet.shared.errors import ModelFormatError


def main() -> int:
    parser = argparse.ArgumentParser(prog="edgetpu_compiler")
    parser.add_argument("-s", "--show_operations", action="store_true")
    parser.add_argument("-o", "--out_dir", default=".")
    parser.add_argument("-t", "--timeout_sec", type=int, default=180)
    parser.add_argument("model")
    args = parser.parse_args()
    model = Path(args.model)
    print("Edge TPU Compiler version 16.0.384591198 (edgefleet test stand-in)")
    try:
        check = precheck(model.read_bytes())
    except (OSError, ModelFormatError) as exc:
        print(f"ERROR: Invalid model: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    cpu = {int(entry.split()[0][1:]) for entry in check.cpu_ops}
    rows = Counter(
        (op.name, "Mapped to Edge TPU" if op.index not in cpu else "Operation not supported")
        for op in check.ops
    )
    shutil.copyfile(model, out / f"{model.stem}_edgetpu.tflite")
    table = "\n".join(f"{name:<30} {n:<10} {status}" for (name, status), n in rows.items())
    (out / f"{model.stem}_edgetpu.log").write_text(table + "\n")
    print(f"Model compiled successfully in 42 ms.\n\nInput model: {model}")
    print(f"Number of Edge TPU subgraphs: {1 if len(cpu) < len(check.ops) else 0}")
    print(f"Total number of operations: {len(check.ops)}")
    print(f"Operation log: {out / (model.stem + '_edgetpu.log')}\n")
    if args.show_operations:
        print(f"{'Operator':<30} {'Count':<10} Status\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
