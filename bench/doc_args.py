"""The options of every bench script that writes a table in docs/ (results.py, auto_results.py)."""
import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def doc_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """--data, --model, --quick, --out and --render for a script writing docs/`doc` and its .json."""
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="CIFAR-10 folder (default $CIFAR10_ROOT or ./data)")
    p.add_argument("--model", default=str(ROOT / "assets" / "resnet20.safetensors"))
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--render", action="store_true", help=f"only rewrite {doc} from the .json of an earlier run in --out")
    return p
