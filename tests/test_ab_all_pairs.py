"""tools/ab_all_pairs.py: two variants of one tree alternate in fresh processes and return the same ids."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "ab_all_pairs.py"


def run_tool(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *arguments, "--device", "cpu", "--n", "600", "--rounds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_variants_of_one_tree_return_the_same_ids_and_each_is_timed():
    done = run_tool("default=src", "small_blocks=src,pair_block=256")
    assert done.returncode == 0, done.stderr
    assert "rows whose ids differ from default's (last round): 0" in done.stdout
    assert done.stdout.count("median / default's median") == 2  # both variants timed


def test_an_attribute_the_index_lacks_is_named():
    done = run_tool("default=src", "typo=src,pair_blok=128")
    assert done.returncode != 0
    assert "index attribute 'pair_blok': TorchFlat.bf16 from src has none" in done.stderr


def test_a_folder_without_embedsearch_is_refused():
    done = run_tool("default=src", "missing=tests")
    assert done.returncode == 2
    assert "'missing=tests': expected NAME=SRC[,ATTRIBUTE=VALUE...], SRC holding embedsearch/" in done.stderr
