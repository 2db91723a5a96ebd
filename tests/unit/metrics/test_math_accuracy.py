"""MathAccuracy counts right answers overall, by kind and in strict format, across processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from src.metrics.math_accuracy import GradedReply, MathAccuracy, graded_results

KINDS = ("add", "mul")

# Replies, expected answers and kinds. Lenient-correct: rows 0, 1, 2, 4, 6;
# strict-correct (marked "Respuesta: N"): rows 0 and 4.
REPLIES = [
    "3 + 4 = 7\nRespuesta: 7",  # add, strict and lenient
    "3 + 5 = 8",  # add, lenient only
    "The answer is 12",  # mul, lenient only
    "Respuesta: 20",  # mul, wrong (expects 21)
    "Respuesta: 2,5",  # None kind, strict and lenient
    "No sé",  # "div" (unknown), wrong
    "6 / 3 = 2",  # add (sic), lenient only
]
EXPECTED = ["7", "8", "12", "21", "2.5", "4", "2"]
ITEM_KINDS: list[str | None] = ["add", "add", "mul", "mul", None, "div", "add"]


def _as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: value.item() for key, value in result.items()}


def test_values_on_a_small_batch() -> None:
    metric = MathAccuracy(kinds=KINDS)
    metric.update(REPLIES, EXPECTED, ITEM_KINDS)
    assert _as_floats(metric.compute()) == {
        "acc": pytest.approx(5 / 7),
        "acc_strict": pytest.approx(2 / 7),
        "acc/add": 1.0,
        "acc/mul": 0.5,
        "acc/other": 0.5,  # the None and the unknown "div" item
        "count": 7.0,
    }


def test_results_are_float_scalars_for_logging() -> None:
    metric = MathAccuracy(kinds=KINDS)
    metric.update(REPLIES, EXPECTED, ITEM_KINDS)
    for value in metric.compute().values():
        assert value.dtype == torch.float32
        assert value.shape == ()


def test_kinds_without_items_are_left_out() -> None:
    metric = MathAccuracy(kinds=("add", "mul", "sub"))
    metric.update(["Respuesta: 7"], ["7"], ["add"])
    assert set(metric.compute()) == {"acc", "acc_strict", "acc/add", "count"}


def test_without_kinds_everything_is_one_group() -> None:
    metric = MathAccuracy()
    metric.update(REPLIES, EXPECTED)
    assert set(metric.compute()) == {"acc", "acc_strict", "count"}
    assert metric.compute()["acc"].item() == pytest.approx(5 / 7)


def test_unknown_kinds_count_as_other() -> None:
    metric = MathAccuracy(kinds=KINDS)
    metric.update(["Respuesta: 1", "Respuesta: 9"], ["1", "2"], ["div", "pow"])
    assert _as_floats(metric.compute()) == {
        "acc": 0.5,
        "acc_strict": 0.5,
        "acc/other": 0.5,
        "count": 2.0,
    }


def test_updates_accumulate_like_one_batch() -> None:
    split = MathAccuracy(kinds=KINDS)
    split.update(REPLIES[:3], EXPECTED[:3], ITEM_KINDS[:3])
    split.update(REPLIES[3:], EXPECTED[3:], ITEM_KINDS[3:])
    whole = MathAccuracy(kinds=KINDS)
    whole.update(REPLIES, EXPECTED, ITEM_KINDS)
    assert _as_floats(split.compute()) == _as_floats(whole.compute())


def test_reset_forgets_earlier_updates() -> None:
    metric = MathAccuracy(kinds=KINDS)
    metric.update(REPLIES, EXPECTED, ITEM_KINDS)
    metric.compute()
    metric.reset()
    metric.update(["Respuesta: 3"], ["4"], ["mul"])
    assert _as_floats(metric.compute()) == {
        "acc": 0.0,
        "acc_strict": 0.0,
        "acc/mul": 0.0,
        "count": 1.0,
    }


def test_no_replies_give_zero_accuracy() -> None:
    metric = MathAccuracy(kinds=KINDS)
    metric.update([], [], [])
    assert _as_floats(metric.compute()) == {"acc": 0.0, "acc_strict": 0.0, "count": 0.0}


def test_mismatched_lengths_are_rejected() -> None:
    metric = MathAccuracy(kinds=KINDS)
    with pytest.raises(ValueError, match=r"Got 2 replies but expected=1, kinds=3"):
        metric.update(["1", "2"], ["1"], ["add", "add", "add"])


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        (("add", "add"), r"'add' is repeated"),
        (("add", "other"), r"'other' is reserved"),
    ],
)
def test_invalid_kinds_are_rejected(kinds: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MathAccuracy(kinds=kinds)


def test_graded_results_list_what_was_read() -> None:
    assert graded_results(REPLIES[2:6], EXPECTED[2:6]) == [
        GradedReply("12", True),
        GradedReply("20", False),
        GradedReply("2.5", True),
        GradedReply(None, False),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _compute_on_rank(rank: int, world_size: int, port: int, out_dir: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        # Uneven halves (4 and 3 items): the states must still add up.
        shard = slice(0, 4) if rank == 0 else slice(4, None)
        metric = MathAccuracy(kinds=KINDS)
        metric.update(REPLIES[shard], EXPECTED[shard], ITEM_KINDS[shard])
        torch.save(metric.compute(), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_agree_with_one(tmp_path: Path) -> None:
    # `start_processes` is `mp.spawn` with a choice of start method. Fork where the platform has
    # it: spawned children re-import torchmetrics, which pulls in transformers and matplotlib
    # (5-10 s each on two cores), while forked ones inherit the parent's modules.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _compute_on_rank,
        args=(2, _free_port(), tmp_path),
        nprocs=2,
        join=True,
        start_method=start_method,
    )

    single = MathAccuracy(kinds=KINDS)
    single.update(REPLIES, EXPECTED, ITEM_KINDS)
    expected = _as_floats(single.compute())
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert _as_floats(synced) == expected
