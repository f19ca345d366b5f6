"""A non-editable install (a built wheel in a fresh venv) carries the prompts and the bundled corpus, and the
command works from any directory."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    """This environment without what would make the new venv see the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the labelwise wheel; dependencies come from this environment's site-packages
    through a .pth line (which adds the directory but runs none of its .pth files, so no editable finder leaks in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
                    str(ROOT)], check=True, capture_output=True, env=clean_env())
    wheel = next((tmp / "dist").glob("labelwise-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, env=clean_env())
    # only now: with this environment visible, pip would take the checkout's install for "already satisfied"
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


def run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(env_dir / "bin" / "labelwise"), *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=300)


def test_wheel_ships_prompts_and_corpus(installed: Path, tmp_path: Path) -> None:
    code = ("import labelwise, labelwise._prompts as p, labelwise._labeler as l; "
            "print(labelwise.__file__); print(p.PROMPTS_DIR); print(l.DEFAULT_CORPUS)")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=clean_env(), check=True).stdout.split()
    for path in out:
        assert str(installed) in path, out  # the installed copy, not this checkout
    assert (Path(out[1]) / "fewshot.yaml").is_file() and (Path(out[1]) / "policy_taxonomy.yaml").is_file()
    assert Path(out[2]).stat().st_size == (ROOT / "data" / "policy_labels.tsv").stat().st_size


def test_installed_command_runs_from_any_directory(installed: Path, tmp_path: Path, fake_server) -> None:
    """`relabel --dry-run` renders a bundled prompt over the bundled corpus; `label` reaches a server."""
    corpus = tmp_path / "mine.tsv"
    corpus.write_text("财政支持\t对企业给予财政补贴。\n税收激励\t落实研发费用加计扣除政策。\n", encoding="utf-8")
    dry = run(installed, "relabel", str(corpus), "--out", str(tmp_path / "run"), "--shots", "2", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "fewshot@" in dry.stdout and "句子：" in dry.stdout
    server = fake_server()
    lab = run(installed, "label", "对新认定的孵化器给予财政支持。", "--model", "openai:fake-model", "--base-url",
              server.base_url, "--shots", "2", cwd=tmp_path)
    assert lab.returncode == 0, lab.stderr
    pred = json.loads(lab.stdout.splitlines()[-1])
    assert pred["status"] == "ok" and pred["prompt"].startswith("fewshot@") and len(pred["examples"]) == 2
