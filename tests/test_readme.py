"""The README's Python examples run as written (the tutorial and the custom layer/loss)."""
import re

import numpy as np

from conftest import REPO_ROOT


def _python_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_examples():
    blocks = _python_blocks()
    assert any("Sequential()" in b for b in blocks) and any("class ParametricReLU" in b for b in blocks)
    assert any("keras.Model(inputs" in b for b in blocks)


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write model.distnn and backups/ here
    namespace: dict = {}  # later snippets continue the earlier ones, as a reader would
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert 0.0 <= namespace["accuracy"] <= 1.0 and np.isfinite(namespace["loss"])
    assert namespace["probabilities"].shape == (1000, 10)
    assert (tmp_path / "model.distnn").exists()
    assert len(namespace["model"].history.epoch) == 10  # the BackupAndRestore run finished its epochs
    assert not list((tmp_path / "backups" / "run1").glob("backup-*"))  # deleted after success, as Keras
    printed = capsys.readouterr().out
    assert "7,114" in printed  # model.summary()
    assert "Connected to" in printed and set(namespace["two_heads"].output_names) == {"digit", "score"}
    errors = [float(v) for v in re.findall(r"^([0-9.e+-]+)$", printed, flags=re.M)]
    assert len(errors) == 2 and max(errors) < 1e-6, printed  # the two gradient checks
