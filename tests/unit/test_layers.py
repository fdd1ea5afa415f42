"""The import layering (pyproject.toml's tool.importlinter contracts): kept by the tree, and each contract broken by
one wrong import added to a copy of the packages (the real tree is never touched)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("services", "shared", "nacelle", "training_jobs")
CONTRACTS = {c["id"]: c["name"] for c in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts on the packages under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def broken(output: str) -> set[str]:
    return {cid for cid, name in CONTRACTS.items() if f"{name} BROKEN" in output}


def test_the_tree_keeps_every_contract() -> None:
    assert set(CONTRACTS) == {"layers", "shared-below", "adapters", "acyclic"}
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(f"{name} KEPT" in result.stdout for name in CONTRACTS.values())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


# (module to write or extend, the wrong import, the contracts it breaks)
WRONG = {
    "aws-adapter-uses-a-use-case": ("shared/aws/wrong.py", "import shared.usecases.alerts", {"layers", "adapters"}),
    "use-case-uses-an-aws-adapter": ("shared/usecases/wrong.py", "import shared.aws.s3", {"layers"}),
    "port-uses-a-use-case": ("shared/ports.py", "import shared.usecases.state_keys",
                             {"layers", "adapters", "acyclic"}),  # every adapter now reaches a use case
    "shared-uses-the-cli": ("shared/wrong.py", "import nacelle.cli", {"shared-below"}),
    "local-adapter-uses-the-stack": ("nacelle/local/adapters/state.py", "import nacelle.local.runtime.stack",
                                     {"adapters", "acyclic"}),
    "cycle-in-shared-ml": ("shared/ml/table.py", "from shared.ml import validation", {"acyclic"}),
}


@pytest.mark.parametrize("case", WRONG.values(), ids=list(WRONG))
def test_a_wrong_import_breaks_its_contract(pristine: Path, tmp_path: Path, case: tuple[str, str, set[str]]) -> None:
    module, statement, contracts = case
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    path = tree / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{statement}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken(result.stdout) == contracts, result.stdout
