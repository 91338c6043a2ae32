"""hfconv's safetensors verdict against the installed safetensors crate, case by case.

Each crafted file is opened with ``safetensors.safe_open(..., "pt")`` and every tensor loaded
(what ``load_file`` and transformers do), and validated with the ``hfconv`` CLI in a folder of
its own: the crate refuses the file <=> hfconv reports an error finding on it. Both directions
are covered: headers the crate reads that hfconv used to refuse (leading whitespace, a
duplicate tensor name, ``__metadata__: null``, an entry written as an array) and headers the
crate refuses that hfconv used to pass (``-0`` offsets, ``[2**32, 2**32, 0]``, a dimension of
2**63 under a zero, ``F6_E2M3``).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

ENTRY = "from hfconv.cli import run; run()"
E = b'{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'  # the canonical 8-byte entry
D8 = b"\0" * 8


def _j(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def _one(entry: bytes) -> bytes:
    """A header holding tensor "w" = ``entry`` and nothing else."""
    return b'{"w":' + entry + b"}"


def _with_extra(value: bytes) -> bytes:
    """The canonical entry plus an unknown field ``x`` holding ``value`` (serde ignores it)."""
    return b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + value + b"}}"


def _empty(dtype: str, shape: list[int]) -> tuple[bytes, bytes]:
    """A zero-byte tensor of ``shape`` beside a real one."""
    return (_j({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "z": {"dtype": dtype, "shape": shape, "data_offsets": [8, 8]}}), D8)


# id -> (header bytes, data bytes)
CASES: dict[str, tuple[bytes, bytes]] = {
    # --- baselines
    "canonical": (_one(E), D8),
    "metadata_pt": (b'{"__metadata__":{"format":"pt"},"w":' + E + b"}", D8),
    "unpadded_escaped_name": (b'{"\\u0077":' + E + b"}", D8),
    "surrogate_pair_name": (b'{"w\\ud83d\\ude00":' + E + b"}", D8),
    "del_in_name": (b'{"w\x7f":' + E + b"}", D8),
    # --- JSON whitespace and framing
    "leading_space": (b" " + _one(E), D8),
    "leading_tab": (b"\t" + _one(E), D8),
    "leading_newline": (b"\n" + _one(E), D8),
    "leading_cr": (b"\r" + _one(E), D8),
    "trailing_spaces": (_one(E) + b"    ", D8),
    "trailing_newline": (_one(E) + b"\n", D8),
    "leading_vt": (b"\x0b" + _one(E), D8),
    "leading_ff": (b"\x0c" + _one(E), D8),
    "leading_nbsp": ("\u00a0".encode() + _one(E), D8),
    "leading_bom": (b"\xef\xbb\xbf" + _one(E), D8),
    "trailing_nul": (_one(E) + b"\0", D8),
    "trailing_text": (_one(E) + b" x", D8),
    "two_objects": (_one(E) + b"{}", D8),
    "control_char_in_name": (b'{"w\x01":' + E + b"}", D8),
    "lone_high_surrogate": (b'{"w\\ud800":' + E + b"}", D8),
    "lone_low_surrogate": (b'{"w\\udc00":' + E + b"}", D8),
    # --- numbers: serde wants a usize, not a float that equals one
    "offsets_minus_zero": (_one(b'{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}'), D8),
    "offsets_float_zero": (_one(b'{"dtype":"F32","shape":[2],"data_offsets":[0.0,8]}'), D8),
    "offsets_exponent": (_one(b'{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}'), D8),
    "shape_float": (_one(b'{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}'), D8),
    "shape_minus_zero_dim": (_one(b'{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}'), b""),
    "offsets_near_u64_max": (_j({"w": {"dtype": "F32", "shape": [2], "data_offsets": [2**64 - 9, 2**64 - 1]}}), D8),
    "offsets_over_u64": (_j({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2**64]}}), D8),
    "extra_minus_zero": (_with_extra(b"-0"), D8),
    "extra_int_308_digits": (_with_extra(b"1" + b"0" * 308), D8),
    "extra_int_309_digits": (_with_extra(b"1" + b"0" * 309), D8),
    "extra_float_1e400": (_with_extra(b"1e400"), D8),
    "extra_nan": (_with_extra(b"NaN"), D8),
    "extra_nested_127": (_with_extra(b"[" * 125 + b"]" * 125), D8),
    "extra_nested_128": (_with_extra(b"[" * 126 + b"]" * 126), D8),
    "extra_duplicate_keys": (_with_extra(b'{"k":1,"k":2}'), D8),
    # --- shapes: the crate's left fold, then what torch can build
    "zero_then_2p63": _empty("F32", [0, 2**63]),
    "2p63_then_zero": _empty("F32", [2**63, 0]),
    "zero_then_u64_max": _empty("U8", [0, 2**64 - 1]),
    "zero_then_2p64": _empty("U8", [0, 2**64]),
    "zero_then_negative": _empty("U8", [0, -1]),
    "zero_then_2p63_minus_1": _empty("U8", [0, 2**63 - 1]),
    "2p63_minus_1_then_zero": _empty("F32", [2**63 - 1, 0]),
    "fold_overflows_before_zero": _empty("U8", [2**32, 2**32, 0]),
    "stride_overflows": _empty("U8", [0, 2**62, 2]),
    "stride_wraps_to_zero": _empty("U8", [0, 2**62, 4]),
    "f4_zero_then_2p63": _empty("F4", [0, 2**63]),
    "f4_zero_then_odd": _empty("F4", [0, 3]),
    "f4_odd_then_zero": _empty("F4", [3, 0]),
    # --- dtypes
    "f4_even_last_dim": (_j({"w": {"dtype": "F4", "shape": [3, 2], "data_offsets": [0, 3]}}), b"\0" * 3),
    "f4_odd_last_dim": (_j({"w": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}), b"\0" * 3),
    "f6_e2m3": (_j({"w": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}), b"\0" * 3),
    "f6_e3m2_empty": _empty("F6_E3M2", [0]),
    "f8_e4m3fnuz": (_j({"w": {"dtype": "F8_E4M3FNUZ", "shape": [8], "data_offsets": [0, 8]}}), D8),
    "f8_e5m2fnuz": (_j({"w": {"dtype": "F8_E5M2FNUZ", "shape": [8], "data_offsets": [0, 8]}}), D8),
    "f8_e8m0": (_j({"w": {"dtype": "F8_E8M0", "shape": [8], "data_offsets": [0, 8]}}), D8),
    "c64": (_j({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}), D8),
    "dtype_c128": (_j({"w": {"dtype": "C128", "shape": [1], "data_offsets": [0, 8]}}), D8),
    "dtype_lowercase": (_j({"w": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}), D8),
    # --- serde's data model
    "entry_as_array": (b'{"w":["F32",[2],[0,8]]}', D8),
    "entry_as_short_array": (b'{"w":["F32",[2]]}', D8),
    "entry_as_long_array": (b'{"w":["F32",[2],[0,8],1]}', D8),
    "dtype_as_unit_variant": (_one(b'{"dtype":{"F32":null},"shape":[2],"data_offsets":[0,8]}'), D8),
    "dtype_variant_with_value": (_one(b'{"dtype":{"F32":1},"shape":[2],"data_offsets":[0,8]}'), D8),
    "dtype_empty_object": (_one(b'{"dtype":{},"shape":[2],"data_offsets":[0,8]}'), D8),
    "metadata_null": (b'{"__metadata__":null,"w":' + E + b"}", D8),
    "metadata_int_value": (b'{"__metadata__":{"format":"pt","x":1},"w":' + E + b"}", D8),
    "metadata_null_value": (b'{"__metadata__":{"format":"pt","x":null},"w":' + E + b"}", D8),
    "metadata_list": (b'{"__metadata__":[],"w":' + E + b"}", D8),
    "metadata_twice": (b'{"__metadata__":{"format":"pt"},"__metadata__":{"format":"pt"},"w":' + E + b"}", D8),
    "metadata_key_twice": (b'{"__metadata__":{"format":"pt","x":"1","x":"2"},"w":' + E + b"}", D8),
    "metadata_key_twice_int_first": (b'{"__metadata__":{"format":"pt","x":1,"x":"2"},"w":' + E + b"}", D8),
    "tensor_twice_same": (b'{"w":' + E + b',"w":' + E + b"}", D8),
    "tensor_twice_last_wins": (b'{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":' + E + b"}", D8),
    "tensor_twice_first_wins_layout": (b'{"w":' + E + b',"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}', D8),
    "tensor_twice_junk_first": (b'{"w":"junk","w":' + E + b"}", D8),
    "tensor_twice_bad_dtype_first": (b'{"w":{"dtype":"XX","shape":[1],"data_offsets":[0,4]},"w":' + E + b"}", D8),
    "tensor_twice_bad_size_first": (b'{"w":{"dtype":"F32","shape":[5],"data_offsets":[0,3]},"w":' + E + b"}", D8),
    "tensor_twice_surrogate_first": (b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":"\\ud800"},"w":'
                                     + E + b"}", D8),
    "field_twice": (_one(b'{"dtype":"F32","shape":[2],"shape":[2],"data_offsets":[0,8]}'), D8),
    "unknown_field_twice": (_one(b'{"dtype":"F32","x":1,"shape":[2],"data_offsets":[0,8],"x":2}'), D8),
    # --- layout of the data section
    "offsets_backwards": (_one(b'{"dtype":"F32","shape":[0],"data_offsets":[8,0]}'), D8),
    "truncated": (_one(E), b"\0" * 4),
    "trailing_data": (_one(E), b"\0" * 12),
}


def _blob(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _crate_refuses(path: Path) -> str | None:
    """Why the installed safetensors refuses to load ``path`` into torch, or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                f.get_tensor(name)
    except Exception as exc:  # the crate's errors, and torch's through it
        return f"{type(exc).__name__}: {exc}"
    return None


def _errors_on(report: dict, file: str) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error" and f["file"] == file]


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    """Every case in a folder of its own, validated by one CLI run: {case: (report, crate verdict)}."""
    root = tmp_path_factory.mktemp("parity")
    folders = []
    for case, (header, data) in CASES.items():
        folder = root / case
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(_blob(header, data))
        folders.append(str(folder))
    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", "--format", "json", *folders],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-3000:]  # some cases are broken
    reports = json.loads(proc.stdout)
    by_case = {Path(report["path"]).name: report for report in reports}
    assert set(by_case) == set(CASES)
    return {case: (by_case[case], _crate_refuses(root / case / "model.safetensors")) for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_hfconv_refuses_exactly_what_the_crate_refuses(verdicts, case):
    report, crate_error = verdicts[case]
    errors = _errors_on(report, "model.safetensors")
    if crate_error is None:
        assert not errors, f"safetensors loads {case}, hfconv reports {errors}"
    else:
        assert errors, f"safetensors refuses {case} ({crate_error}), hfconv reports no error: {report['findings']}"
        assert all("model.safetensors" in e["message"] for e in errors)


def test_both_directions_are_exercised(verdicts):
    refused = {case for case, (_, crate_error) in verdicts.items() if crate_error is not None}
    # The crate's side of the ledger, pinned so a case cannot silently change sides.
    assert {"leading_space", "tensor_twice_same", "metadata_null", "entry_as_array", "zero_then_2p63_minus_1",
            "f8_e4m3fnuz", "dtype_as_unit_variant", "metadata_key_twice", "extra_nested_127"}.isdisjoint(refused)
    assert {"offsets_minus_zero", "offsets_float_zero", "zero_then_2p63", "fold_overflows_before_zero",
            "f6_e2m3", "stride_overflows", "extra_nested_128", "tensor_twice_junk_first"} <= refused


def test_serde_only_forms_are_a_warning(verdicts):
    """What the crate reads but another reader could read differently is HFC114, a warning."""
    for case in ("tensor_twice_last_wins", "metadata_key_twice", "entry_as_array", "dtype_as_unit_variant"):
        report, _ = verdicts[case]
        codes = {(f["code"], f["severity"]) for f in report["findings"] if f["file"] == "model.safetensors"}
        assert ("HFC114", "warning") in codes, (case, report["findings"])


def test_masked_bias_with_impossible_shape_fails_validation(tmp_path):
    """Issue 17 point 4: a GPT-2 buffer loaders ignore still makes load_file refuse the file."""
    from safetensors.torch import load_file

    folder = tmp_path / "gpt2"
    shutil.copytree(FIXTURES / "families" / "gpt2", folder)
    path = folder / "model.safetensors"
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    header["transformer.h.0.attn.masked_bias"] = {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [end, end]}
    path.write_bytes(_blob(_j(header), data))
    with pytest.raises(Exception):
        load_file(str(path))

    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", "--format", "json", str(folder)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    errors = _errors_on(report, "model.safetensors")
    assert [e["tensor"] for e in errors] == ["transformer.h.0.attn.masked_bias"]
    assert "9223372036854775808" in errors[0]["message"]
