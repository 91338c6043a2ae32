"""The shard planner and size parser, with plain integers (no torch, no files)."""

from __future__ import annotations

import pytest

from hfconv.sharding import parse_size, plan_shards, shard_file_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5 * 10**9),
        ("5GiB", 5 * 2**30),
        ("500MB", 500 * 10**6),
        ("200KB", 200 * 10**3),
        ("2TB", 2 * 10**12),
        ("1MiB", 2**20),
        ("3KiB", 3 * 1024),
        ("1.5GB", 1_500_000_000),
        ("5 GB", 5 * 10**9),
        ("5gb", 5 * 10**9),
        ("5gib", 5 * 2**30),
        ("1000", 1000),
        ("1000B", 1000),
        (" 42 ", 42),
        (123, 123),
        ("99999999999999999999GB", 99999999999999999999 * 10**9),  # exact, no float rounding
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "invalid size"),
        ("GB", "invalid size"),
        ("5XB", "unknown unit"),
        ("-5GB", "invalid size"),
        ("0", "at least one byte"),
        ("0GB", "at least one byte"),
        ("0.0000000001KB", "at least one byte"),
        (0, "positive"),
        (-1, "positive"),
        (True, "invalid size"),
        (1.5, "invalid size"),
        ("5Gb", "bits"),
        ("5Mb", "bits"),
        ("nan", "invalid size"),
        ("inf", "invalid size"),
        ("5 G B", "invalid size"),
    ],
)
def test_parse_size_refuses(text, words):
    with pytest.raises(ValueError, match=words):
        parse_size(text)


def _sizes(*sizes: int) -> list[tuple[str, int]]:
    return [(f"t{i}", size) for i, size in enumerate(sizes)]


def test_plan_one_shard_when_everything_fits():
    assert plan_shards(_sizes(1, 2, 3), 6) == [["t0", "t1", "t2"]]


def test_plan_new_shard_when_next_tensor_would_exceed():
    # 4+3 > 6 -> new shard; 3+3 == 6 fits (the limit itself is allowed).
    assert plan_shards(_sizes(4, 3, 3, 1), 6) == [["t0"], ["t1", "t2"], ["t3"]]


def test_plan_oversized_tensor_alone_and_order_kept():
    # The huggingface_hub test state dict: sizes 6, 10, 30, 2, 2 with a limit of 10.
    plan = plan_shards(_sizes(6, 10, 30, 2, 2), 10)
    assert plan == [["t0"], ["t1"], ["t2"], ["t3", "t4"]]
    assert [name for shard in plan for name in shard] == ["t0", "t1", "t2", "t3", "t4"]


def test_plan_oversized_tensor_first_and_last():
    assert plan_shards(_sizes(50, 1, 1, 50), 10) == [["t0"], ["t1", "t2"], ["t3"]]


def test_plan_zero_sized_tensors_and_empty():
    assert plan_shards(_sizes(0, 0, 5, 0), 5) == [["t0", "t1", "t2", "t3"]]
    assert plan_shards([], 5) == []


def test_plan_every_shard_within_limit_unless_alone():
    sizes = [7, 1, 9, 3, 3, 12, 2, 2, 2, 2, 8, 1]
    plan = plan_shards(_sizes(*sizes), 10)
    lookup = dict(_sizes(*sizes))
    for shard in plan:
        total = sum(lookup[n] for n in shard)
        assert total <= 10 or len(shard) == 1
    # Greedy: no shard could have taken the first tensor of the next one.
    for shard, following in zip(plan, plan[1:]):
        total = sum(lookup[n] for n in shard)
        assert total + lookup[following[0]] > 10 or lookup[following[0]] > 10 or lookup[shard[0]] > 10


def test_plan_refuses_bad_input():
    with pytest.raises(ValueError, match="positive"):
        plan_shards(_sizes(1), 0)
    with pytest.raises(ValueError, match="negative"):
        plan_shards([("a", -1)], 10)
    with pytest.raises(ValueError, match="twice"):
        plan_shards([("a", 1), ("a", 1)], 10)


def test_shard_file_name():
    assert shard_file_name(1, 1) == "model.safetensors"
    assert shard_file_name(1, 3) == "model-00001-of-00003.safetensors"
    assert shard_file_name(3, 3) == "model-00003-of-00003.safetensors"
    assert shard_file_name(7, 123456) == "model-00007-of-123456.safetensors"
    with pytest.raises(ValueError):
        shard_file_name(0, 3)
    with pytest.raises(ValueError):
        shard_file_name(4, 3)
