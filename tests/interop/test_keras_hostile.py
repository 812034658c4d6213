"""Hostile ``.keras`` / ``.weights.h5`` files fail with a ValueError naming the problem, before they
cost memory or read anything outside themselves."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from distnn import layers, models
from distnn.saving import zip_bytes


def _model():
    return models.Sequential([layers.Input((4,)), layers.Dense(3, activation="relu"), layers.Dense(2)])


@pytest.fixture
def members(tmp_path):
    """The members of a sound .keras file written by distnn."""
    _model().save(tmp_path / "good.keras")
    with zipfile.ZipFile(tmp_path / "good.keras") as z:
        return {name: z.read(name) for name in z.namelist()}


def _write(tmp_path, members, name="bad.keras"):
    path = tmp_path / name
    path.write_bytes(zip_bytes(members))
    return path


def _edit_h5(payload: bytes, edit) -> bytes:
    import h5py  # noqa: PLC0415

    buffer = io.BytesIO(payload)
    with h5py.File(buffer, "r+") as f:
        edit(f)
    return buffer.getvalue()


def _edit_config(members, edit):
    config = json.loads(members["config.json"])
    edit(config)
    return {**members, "config.json": json.dumps(config).encode()}


def _load(path):
    return models.load_model(path)


def test_sound_file_loads(tmp_path, members):
    assert _load(_write(tmp_path, members)).count_params() == 4 * 3 + 3 + 3 * 2 + 2


def test_zip_bomb_is_refused_unread(tmp_path, members):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, payload in members.items():
            z.writestr(name, payload)
        z.writestr("config.json", b" " * (200 << 20))  # 200 MiB of spaces in a few hundred kilobytes
    with pytest.raises(ValueError):  # duplicate or compressed member: refused from the directory alone
        _load(path)
    with zipfile.ZipFile(path := tmp_path / "bomb2.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", members["metadata.json"])
        z.writestr("config.json", b"{" + b" " * (200 << 20) + b"}")
        z.writestr("model.weights.h5", members["model.weights.h5"])
    with pytest.raises(ValueError, match="compressed"):
        _load(path)


def test_unexpected_member_is_refused(tmp_path, members):
    with pytest.raises(ValueError, match="unexpected members.*assets/x"):
        _load(_write(tmp_path, {**members, "assets/x": b"data"}))


def test_damaged_weights_are_refused(tmp_path, members):
    path = _write(tmp_path, members)
    damaged = bytearray(path.read_bytes())
    start = bytes(damaged).index(members["model.weights.h5"])  # the stored member's bytes in the zip
    damaged[start + len(members["model.weights.h5"]) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="model.weights.h5 is damaged"):
        _load(path)


def test_oversized_dataset_is_refused_before_reading(tmp_path, members):
    def enlarge(f):
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(10**7, 3), dtype="float32")  # declared, never stored

    h5 = _edit_h5(members["model.weights.h5"], enlarge)
    with pytest.raises(ValueError, match=r"layers/dense/vars/0 has shape \(10000000, 3\)"):
        _load(_write(tmp_path, {**members, "model.weights.h5": h5}))


def test_config_larger_than_the_weights_is_refused_before_allocating(tmp_path, members):
    def grow(config):
        config["config"]["layers"][1]["config"]["units"] = 10**9

    with pytest.raises(ValueError, match="refusing to allocate"):
        _load(_write(tmp_path, _edit_config(members, grow)))


@pytest.mark.parametrize("entry", [
    {"module": "os", "class_name": "system", "config": {"command": "touch /tmp/pwned"}, "registered_name": None},
    {"module": "builtins", "class_name": "function", "config": "eval", "registered_name": "function"},
])
def test_configs_naming_modules_are_refused_by_name(tmp_path, members, entry):
    def replace(config):
        if entry["class_name"] == "function":
            config["config"]["layers"][1]["config"]["activation"] = entry
        else:
            config["config"]["layers"][1] = entry

    with pytest.raises(ValueError, match=f"module '{entry['module']}'"):
        _load(_write(tmp_path, _edit_config(members, replace)))


def test_links_to_other_files_are_refused(tmp_path, members):
    outside = tmp_path / "outside.h5"
    import h5py  # noqa: PLC0415

    with h5py.File(outside, "w") as f:
        f["x"] = np.ones((4, 3), "float32")

    def link(f):
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.ExternalLink(str(outside), "x")

    h5 = _edit_h5(members["model.weights.h5"], link)
    with pytest.raises(ValueError, match="ExternalLink"):
        _load(_write(tmp_path, {**members, "model.weights.h5": h5}))

    def virtual(f):
        del f["layers/dense/vars/0"]
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="float32")
        layout[:] = h5py.VirtualSource(str(outside), "x", shape=(4, 3))
        f["layers/dense/vars"].create_virtual_dataset("0", layout)

    h5 = _edit_h5(members["model.weights.h5"], virtual)
    with pytest.raises(ValueError, match="outside the file"):
        _load(_write(tmp_path, {**members, "model.weights.h5": h5}))


def test_non_numeric_dataset_is_refused(tmp_path, members):
    import h5py  # noqa: PLC0415

    def strings(f):
        del f["layers/dense/vars/1"]
        f.create_dataset("layers/dense/vars/1", shape=(3,), dtype=h5py.string_dtype())

    h5 = _edit_h5(members["model.weights.h5"], strings)
    with pytest.raises(ValueError, match="dtype"):
        _load(_write(tmp_path, {**members, "model.weights.h5": h5}))


def test_weights_file_that_is_no_hdf5_leaves_the_model_unchanged(tmp_path):
    model = _model()
    before = [v.numpy() for v in model.variables]
    (tmp_path / "w.weights.h5").write_bytes(b"not hdf5" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        model.load_weights(tmp_path / "w.weights.h5")
    other = models.Sequential([layers.Input((4,)), layers.Dense(3), layers.Dense(5)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="shape"):
        model.load_weights(tmp_path / "other.weights.h5")
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))
