"""SHA-256 of every artifact the CLI writes for the shipped samples, to check a change keeps them.

    python benchmarks/artifact_digests.py OUT.json            # record
    python benchmarks/artifact_digests.py OUT.json --compare BEFORE.json

Runs each command below in a fresh process (the same command must give the same bytes) and
records the digest of every .tflite/.onnx/.h5/.keras it wrote. Used to check that a refactor
changes the shape of the code, not what it computes.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
S = REPO / "sample_models"
FEW = ["--latency-runs", "3"]
COMMANDS = {
    "quantize dcgan_digits": ["quantize", S / "dcgan_digits.h5", *FEW],
    "quantize dcgan_saturated": ["quantize", S / "dcgan_saturated.h5", *FEW],
    "quantize cvae_decoder.keras": ["quantize", S / "cvae_decoder.keras", *FEW],
    "quantize sr_photos": ["quantize", S / "sr_photos.h5", *FEW],
    "quantize all modes, no guard": ["quantize", S / "dcgan_digits.h5", "--mode", "all", "--min-psnr", "0", *FEW],
    "export savedmodel": ["export", S / "sr_photos_savedmodel", *FEW],
    "quantize qat": ["quantize", S / "cvae_decoder.h5", "--method", "qat", "--steps", "100", *FEW],
    "prune then int8": ["prune", S / "dcgan_digits.h5", "--sparsity", "0.5", "--steps", "200", "--then", "int8", *FEW],
    "distill then int8": ["distill", S / "dcgan_digits.h5", "--width", "0.5", "--steps", "200", "--then", "int8", *FEW],
}
SUFFIXES = {".tflite", ".onnx", ".h5", ".keras"}


def record() -> dict:
    digests = {}
    for name, args in COMMANDS.items():
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "gencompress", *map(str, args), "-o", out]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode not in (0, 3):
                sys.exit(f"{name}: exit {result.returncode}\n{result.stderr[-2000:]}")
            digests[name] = {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(Path(out).iterdir())
                if p.suffix in SUFFIXES
            }
        print(f"{name}: {len(digests[name])} files", flush=True)
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--compare", help="a JSON file recorded before")
    args = parser.parse_args()
    digests = record()
    Path(args.out).write_text(json.dumps(digests, indent=2) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [
            f"{cmd}: {name}"
            for cmd in sorted(set(before) | set(digests))
            for name in sorted(set(before.get(cmd, {})) | set(digests.get(cmd, {})))
            if before.get(cmd, {}).get(name) != digests.get(cmd, {}).get(name)
        ]
        print("\n".join(differ) if differ else f"all {sum(map(len, digests.values()))} artifacts byte-identical")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
