import json
import re
import shutil
import subprocess
from pathlib import Path

from embedsearch import cli
from embedsearch.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_help_lists_the_commands():
    executable = shutil.which("embedsearch")
    assert executable, "the embedsearch console script is not installed (pip install -e .)"
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout


def test_demo_prints_both_backends_with_full_recall(capsys):
    assert main(["demo", "--n", "2000", "--d", "32", "--nq", "100", "--classes", "10", "--repeats", "1"]) == 0
    output = capsys.readouterr().out
    assert "numpy float32 matmul" in output
    assert re.search(r"Flat:.*recall@10 vs Flat 1\.0000", output)
    assert re.search(r"TorchFlat:.*recall@10 vs Flat 1\.0000", output)


def test_bad_arguments_exit_2_with_the_reason(capsys):
    assert main(["demo", "--n", "5", "--k", "10", "--classes", "2", "--nq", "3", "--d", "4"]) == 2
    assert "k=10: expected 1 <= k <= 5" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme_commands = re.findall(r"^(python -m pip install .*)$", (ROOT / "README.md").read_text(), re.M)
    assert len(readme_commands) >= 2, "README must open with the main-job and test commands"
    test_command = readme_commands[1].split("#")[0].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_demo_refuses_zero_repeats(capsys):
    # it crashed with UnboundLocalError
    assert main(["demo", "--n", "50", "--d", "4", "--nq", "5", "--classes", "2", "--repeats", "0"]) == 2
    assert "--repeats=0: expected at least 1" in capsys.readouterr().err


def test_run_checks_the_json_path_before_the_work(tmp_path, capsys, monkeypatch):
    # an unwritable --json path lost the record after the whole run
    def no_work(config):
        raise AssertionError("the experiment ran before --json was checked")

    monkeypatch.setattr(cli, "run_experiment", no_work)
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    for path, reason in ((tmp_path, "is a directory"), (in_the_way / "run.json", "is a file, so no folder")):
        assert main(["run", "--json", str(path)]) == 2
        error = capsys.readouterr().err
        assert f"--json='{path}'" in error and reason in error, error


def test_run_writes_the_json_record_into_new_folders(tmp_path):
    record = tmp_path / "results" / "run.json"
    assert main(["run", "--k", "1", "--json", str(record)]) == 0
    assert json.loads(record.read_text())["config"]["ks"] == [1]
