"""Hostile and malformed model files: each fails with a ValueError naming the file and what is wrong,
before anything large is read or allocated, without running code or writing files (distnn.saving,
distnn.archive; docs/architecture.md, "Reliability: files and backups")."""
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from conftest import REPO_ROOT, subprocess_env
from distnn import archive, saving
from distnn.layers import Dense
from distnn.models import Sequential, load_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 5)).astype("float32")
Y = np.eye(3, dtype="float32")[RNG.integers(3, size=32)]
HOSTILE_RSS_LIMIT_MB = 200


@pytest.fixture(scope="module")
def members():
    """The members of a small trained model file (config.json, weights.npz, optimizer.npz)."""
    model = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(X, Y, epochs=1, verbose=0)
    return saving.model_archive(model)


def config_of(members) -> dict:
    return json.loads(members["config.json"])


def with_config(members, change) -> dict:
    config = config_of(members)
    change(config)
    return {**members, "config.json": json.dumps(config).encode()}


def npz_members(payload: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        return {name: z.read(name) for name in z.namelist()}


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def hand_made_zip(entries) -> bytes:
    """A zip written byte by byte from ``(name, data, method, declared size, crc, flags)``: what no
    zip library would write, such as a deflated member declaring gigabytes."""
    out, central = bytearray(), bytearray()
    for name, data, method, size, crc, flags in entries:
        encoded = name.encode()
        header = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, flags, method, 0, 0, crc, len(data), size,
                             len(encoded), 0)
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 0, 20, 0, flags, method, 0, 0, crc, len(data),
                               size, len(encoded), 0, 0, 0, 0, 0, len(out)) + encoded
        out += header + encoded + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def stored(name, data):
    return (name, data, 0, len(data), zlib.crc32(data), 0)


def deflate_bomb(name, gib):
    """A deflated member of ``gib`` GiB of zeros in about a MiB per GiB (independent 16 MiB blocks)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(16 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = block * (gib * 64) + b"\x03\x00"  # then an empty final block
    return (name, data, zipfile.ZIP_DEFLATED, gib << 30, 0, 0)


def central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s central directory entry in the zip ``data``."""
    size, offset = struct.unpack("<2L", data[-10:-2])
    position = offset
    while position < offset + size:
        name_length, extra_length, comment_length = struct.unpack("<3H", data[position + 28:position + 34])
        if data[position + 46:position + 46 + name_length] == name.encode():
            return position
        position += 46 + name_length + extra_length + comment_length
    raise KeyError(name)


def patched(data: bytes, name: str, field: int, fmt: str, value: int) -> bytes:
    """``data`` with one field of ``name``'s central directory entry overwritten."""
    position = central_entry(data, name) + field
    return data[:position] + struct.pack(fmt, value) + data[position + struct.calcsize(fmt):]


# ---------------------------------------------------------------------------- absurd files, measured
def test_bombs_and_absurd_configs_fail_with_bounded_memory(members, tmp_path):
    """Each file fails by name in a fresh process whose peak RSS stays under 200 MB, and nothing is
    written: an extra deflated member of 3 GiB, a deflated weights.npz declaring 3 GiB, a config
    whose Dense(100000) would allocate 1.5 GiB, and units=10**12."""
    def big_dense(config):
        first = config["model"]["config"]["layers"][0]["config"]
        first["batch_input_shape"], first["units"] = [None, 4000], 100_000

    def huge_units(config):
        config["model"]["config"]["layers"][0]["config"]["units"] = 10**12

    files = {
        "extra_bomb": hand_made_zip([stored(n, p) for n, p in members.items()] + [deflate_bomb("extra.bin", 3)]),
        "weights_bomb": hand_made_zip([stored("config.json", members["config.json"]), deflate_bomb("weights.npz", 3)]),
        "dense_100000": saving.zip_bytes(with_config(members, big_dense)),
        "units_10_12": saving.zip_bytes(with_config(members, huge_units)),
    }
    paths = []
    for name, payload in files.items():
        (tmp_path / f"{name}.distnn").write_bytes(payload)
        paths.append(str(tmp_path / f"{name}.distnn"))
    assert max(len(p) for p in files.values()) < 4 << 20  # hostile files of a few MB
    before = sorted(os.listdir(tmp_path))
    script = (
        "import json, sys\n"
        "from distnn.models import load_model\n"
        "errors = {}\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_model(path)\n"
        "        errors[path] = None\n"
        "    except Exception as exc:\n"
        "        errors[path] = [type(exc).__name__, str(exc)]\n"
        # VmHWM, not ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss across exec.
        "peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "print(json.dumps({'errors': errors, 'peak_kb': peak[0]}))\n")
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    errors = dict(zip(files, (report["errors"][p] for p in paths)))
    for name, path in zip(files, paths):
        assert errors[name] is not None and errors[name][0] == "ValueError", (name, errors[name])
        assert path in errors[name][1], errors[name]
    assert "unexpected members ['extra.bin']" in errors["extra_bomb"][1]
    assert "'weights.npz' is compressed" in errors["weights_bomb"][1]
    assert "/kernel of shape (4000, 100000)" in errors["dense_100000"][1]
    assert "refusing to allocate" in errors["units_10_12"][1]
    assert "(5, 1000000000000)" in errors["units_10_12"][1]
    peak_mb = report["peak_kb"] / 1024
    print(f"peak RSS while refusing the hostile files: {peak_mb:.0f} MB")
    assert peak_mb < HOSTILE_RSS_LIMIT_MB
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


# ------------------------------------------------------------------------------ malformed files
def _set(path, value):
    def change(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _drop(key):
    return lambda config: config.pop(key)


def _config_file(change):
    return lambda m: saving.zip_bytes(with_config(m, change))


def _raw_config(payload):
    return lambda m: saving.zip_bytes({**m, "config.json": payload})


def _weights(change):
    def build(m):
        arrays = npz_members(m["weights.npz"])
        change(arrays)
        return saving.zip_bytes({**m, "weights.npz": saving.zip_bytes(arrays)})
    return build


def _zip_field(name, field, fmt, value):
    return lambda m: patched(saving.zip_bytes(m), name, field, fmt, value)


MALFORMED = {
    "config_not_json": (_raw_config(b"{not json"), "not valid UTF-8 JSON"),
    "config_not_utf8": (_raw_config(b'\xff\xfe{"format": "distnn"}'), "not valid UTF-8 JSON"),
    "config_is_a_list": (_raw_config(b"[1, 2]"), "not a distnn model file"),
    "config_nested_100000_deep": (_raw_config(b"[" * 100_000 + b"]" * 100_000), "nested"),
    "config_nested_70_deep": (_raw_config(b'{"a":' * 70 + b"1" + b"}" * 70), "nested more than 64 levels"),
    "config_huge_integer": (_raw_config(b'{"format": "distnn", "version": ' + b"9" * 5000 + b"}"), "JSON"),
    "version_from_the_future": (_config_file(_set(["version"], 99)), "unsupported version 99"),
    "no_weight_table": (_config_file(_drop("weights")), "weight table"),
    "weight_shape_not_numbers": (_config_file(_set(["weights", 0], ["dense/kernel", ["x"]])), "entry 0"),
    "model_not_an_object": (_config_file(_set(["model"], [1])), "'model' must be a JSON object"),
    "layers_not_a_list": (_config_file(_set(["model", "config", "layers"], 5)), "cannot be rebuilt"),
    "layer_without_class_name": (_config_file(_set(["model", "config", "layers", 0], {"config": {}})),
                                 "cannot be rebuilt"),
    "layer_of_unknown_class": (_config_file(_set(["model", "config", "layers", 0, "class_name"], "os.system")),
                               "Unknown layer class 'os.system'"),
    "model_of_unknown_class": (_config_file(_set(["model", "class_name"], "builtins.eval")),
                               "Unknown layer class 'builtins.eval'"),
    "units_not_a_number": (_config_file(_set(["model", "config", "layers", 0, "config", "units"], "many")), "units"),
    "input_shape_a_string": (_config_file(_set(["model", "config", "layers", 0, "config", "batch_input_shape"],
                                               "abc")), "cannot be rebuilt"),
    "optimizer_a_number": (_config_file(_set(["compile", "optimizer"], 5)), "'compile' must be null"),
    "optimizer_config_a_list": (_config_file(_set(["compile", "optimizer"], {"class_name": "Adam", "config": [1]})),
                                "compile settings"),
    "weights_npz_not_a_zip": (lambda m: saving.zip_bytes({**m, "weights.npz": b"garbage"}), "is not a valid zip"),
    "array_missing": (_weights(lambda a: a.pop("w1.npy")), "missing ['w1']"),
    "array_of_other_shape": (_weights(lambda a: a.update({"w0.npy": npy_bytes(np.zeros((5, 9), "float32"))})),
                             "shape (5, 9), expected (5, 8)"),
    "npy_bad_magic": (_weights(lambda a: a.update({"w0.npy": b"NOTNUMPY" + a["w0.npy"][8:]})), "no valid .npy header"),
    "npy_truncated": (_weights(lambda a: a.update({"w0.npy": a["w0.npy"][:-40]})), "bytes of data"),
    "npy_strings": (_weights(lambda a: a.update({"w0.npy": npy_bytes(np.array(["a"] * 40).reshape(5, 8))})),
                    "expected numbers"),
    "extra_member": (lambda m: saving.zip_bytes({**m, "notes.txt": b"hi"}), "unexpected members ['notes.txt']"),
    "member_missing": (lambda m: saving.zip_bytes({"config.json": m["config.json"]}), "missing ['weights.npz']"),
    "duplicate_member": (lambda m: hand_made_zip([stored(n, p) for n, p in m.items()]
                                                 + [stored("config.json", m["config.json"])]), "twice"),
    "encryption_flag": (_zip_field("config.json", 8, "<H", 1), "unsupported flags"),
    "compression_method_flipped": (_zip_field("weights.npz", 10, "<H", 8), "is compressed"),
    "size_past_the_end": (lambda m: patched(patched(saving.zip_bytes(m), "weights.npz", 20, "<L", 1 << 30),
                                            "weights.npz", 24, "<L", 1 << 30), "extends past the end"),
    "local_header_damaged": (lambda m: saving.zip_bytes(m).replace(b"PK\x03\x04", b"PK\x03\x05", 1),
                             "local header"),
    "not_a_zip": (lambda m: b"hello", "not a zip archive"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_fails_with_a_value_error_naming_it(members, tmp_path, case):
    build, expected = MALFORMED[case]
    path = tmp_path / f"{case}.distnn"
    path.write_bytes(build(members))
    with pytest.raises(ValueError) as info:
        load_model(str(path))
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_a_directory_or_a_fifo_is_not_a_model_file(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: is not a regular file"):
        load_model(str(tmp_path))
    os.mkfifo(tmp_path / "pipe.distnn")  # opening it would wait for a writer forever
    with pytest.raises(ValueError, match="pipe.distnn: is not a regular file"):
        load_model(str(tmp_path / "pipe.distnn"))
    with pytest.raises(FileNotFoundError, match="missing.distnn"):
        load_model(str(tmp_path / "missing.distnn"))


def test_load_weights_checks_every_array_before_assigning_any(members, tmp_path):
    model = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(3, activation="softmax")])
    before = model.params.copy()
    damaged = bytearray(saving.zip_bytes(members))
    # Flip a byte inside the last weight array's data: only its CRC-32 can tell.
    w3 = npz_members(members["weights.npz"])["w3.npy"]
    position = bytes(damaged).index(w3) + len(w3) - 1
    damaged[position] ^= 0xFF
    path = tmp_path / "damaged.distnn"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"{path}: array w3 is damaged"):
        model.load_weights(str(path))
    np.testing.assert_array_equal(model.params, before)  # w0..w2 were sound, yet none was assigned


def test_json_nesting_limit_is_checked_without_recursion():
    deep = b"[" * (archive.MAX_JSON_DEPTH + 1) + b"]" * (archive.MAX_JSON_DEPTH + 1)
    with pytest.raises(ValueError, match="where: the JSON is nested more than"):
        archive.parse_json(deep, "where")
    assert archive.parse_json(b"[" * archive.MAX_JSON_DEPTH + b"]" * archive.MAX_JSON_DEPTH, "where") is not None
