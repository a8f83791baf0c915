"""Model manifest and the project's own trained heads, installed with the package."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "manifest.yaml"
HEADS = ROOT / "heads"
