"""``validate --deep``: every byte read once; CRC-32 of .bin storages, NaN and inf values."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hfconv.validation import validate

from helpers import FIXTURES, LAYOUTS, save_big_endian

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e5m2, torch.float8_e4m3fn]


def deep_findings(folder: Path) -> list:
    return [f for f in validate(folder, deep=True).findings if f.code.startswith("HFC9")]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_good_folders_are_clean(layout: str) -> None:
    assert deep_findings(FIXTURES / layout) == []


def test_deep_is_off_by_default(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"w": torch.tensor([float("nan")])}, folder / "model.safetensors")
    assert not [f for f in validate(folder).findings if f.code.startswith("HFC9")]
    assert [f.code for f in deep_findings(folder)] == ["HFC902"]


def special_values(dtype: torch.dtype, n: int = 3000) -> torch.Tensor:
    """Random values with NaN and (where the dtype has it) inf sprinkled in, in ``dtype``."""
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(n, generator=generator)
    values[torch.randint(0, n, (40,), generator=generator)] = float("nan")
    values[torch.randint(0, n, (25,), generator=generator)] = float("inf")
    values[torch.randint(0, n, (25,), generator=generator)] = float("-inf")
    return values.to(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_nan_and_inf_counts_match_torch(tmp_path: Path, dtype: torch.dtype) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    values = special_values(dtype)
    save_file({"w": values, "ok": torch.ones(4, dtype=dtype)}, folder / "model.safetensors")
    as_float = values.float()  # torch has no isnan for float8
    nan, inf = int(torch.isnan(as_float).sum()), int(torch.isinf(as_float).sum())
    assert nan  # the cast keeps NaN in every dtype; e4m3fn turns inf into NaN
    found = {f.code: f for f in deep_findings(folder)}
    assert f"holds {nan:,} NaN values (of 3,000)" in found["HFC902"].message
    assert found["HFC902"].tensor == "w" and found["HFC902"].severity.value == "error"
    if inf:
        assert f"holds {inf:,} infinite values" in found["HFC903"].message
        assert found["HFC903"].severity.value == "warning"
    else:
        assert "HFC903" not in found


def test_integer_tensors_are_not_judged(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"ids": torch.full((10,), 0x7FC00000, dtype=torch.int32)}, folder / "model.safetensors")
    assert deep_findings(folder) == []


def flip_storage_byte(path: Path, member_suffix: str, at: int) -> None:
    """Flip one bit inside a stored zip member, leaving the zip directory (and its CRC) as it was."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + at] ^= 0x10
    path.write_bytes(bytes(data))


def test_corrupted_bin_storage_fails_its_crc(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "llama-bin", folder)
    assert deep_findings(folder) == []
    flip_storage_byte(folder / "pytorch_model.bin", "data/3", 5)
    torch.load(folder / "pytorch_model.bin", weights_only=True)  # torch loads it without a word
    [found] = deep_findings(folder)
    assert found.code == "HFC901" and found.file == "pytorch_model.bin" and found.tensor
    assert "data/3" in found.message and "CRC-32" in found.message
    assert "HFC901" not in {f.code for f in validate(folder).findings}  # headers only without --deep


def test_big_endian_values_are_read_in_their_byte_order(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    values = special_values(torch.float32)
    save_big_endian({"w": values, "h": special_values(torch.float16)}, folder / "pytorch_model.bin")
    found = {(f.code, f.tensor): f.message for f in deep_findings(folder)}
    assert f"{int(torch.isnan(values).sum()):,} NaN" in found[("HFC902", "w")]
    assert ("HFC902", "h") in found and ("HFC903", "w") in found
    assert not [key for key in found if key[0] == "HFC901"]  # the rewritten zip has honest CRCs


def test_cli_deep_flag(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hfconv.cli import main

    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "llama-bin", folder)
    flip_storage_byte(folder / "pytorch_model.bin", "data/1", 0)
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(folder)]).exit_code == 0  # headers are intact
    result = runner.invoke(main, ["validate", str(folder), "--deep", "--format", "json"])
    assert result.exit_code == 1
    assert [f["code"] for f in json.loads(result.stdout)["findings"] if f["severity"] == "error"] == ["HFC901"]
    assert "--deep" in runner.invoke(main, ["validate", "--help"]).output


def test_values_are_judged_per_tensor_view_not_per_storage(tmp_path: Path) -> None:
    """torch.save keeps a slice's whole storage; only the elements the tensor views count."""
    folder = tmp_path / "m"
    folder.mkdir()
    base = torch.randn(100)
    base[50:] = float("nan")
    grid = torch.randn(6, 8)
    grid[0, 3] = float("inf")
    torch.save({"head": base[:10], "middle": base[45:55], "transposed": grid.T, "alias": grid.T},
               folder / "pytorch_model.bin")
    found = {(f.code, f.tensor): f.message for f in deep_findings(folder)}
    assert set(found) == {("HFC902", "middle"), ("HFC903", "transposed")}
    assert "5 NaN values (of 10)" in found[("HFC902", "middle")]
    assert "1 infinite values (of 48)" in found[("HFC903", "transposed")]
