"""The prediction store: durable appends, torn-line recovery, merge order, atomic pred.json."""
from __future__ import annotations

import json

from milebench.runner.dist import Dist
from milebench.runner.loop import batches_of
from milebench.files import write_atomic
from milebench.runner.store import JsonlAppender, PredictionStore, read_complete_lines


def rec(sid: int, text: str = "x") -> dict:
    return {"sample_id": sid, "pred_response": text}


def test_append_then_load_reads_every_rank_and_pred_json(tmp_path):
    store = PredictionStore(tmp_path / "WebQA")
    with store.appender(0) as a:
        a.append([rec(3), rec(1)])
    with store.appender(1) as a:
        a.append([rec(2, "two")])
    done = store.load()
    assert sorted(done) == [1, 2, 3]
    assert done[2]["pred_response"] == "two"


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    store = PredictionStore(tmp_path / "D")
    with store.appender(0) as a:
        a.append([rec(1), rec(2)])
    part = store.partial_dir / "rank0.jsonl"
    good = part.read_bytes()
    part.write_bytes(good + b'{"sample_id": 3, "pred_resp')  # killed mid-write
    assert sorted(store.load()) == [1, 2]
    with store.appender(0) as a:  # reopening cuts the torn tail
        a.append([rec(3)])
    assert part.read_bytes() == good + b'{"sample_id": 3, "pred_response": "x"}\n'
    assert [r["sample_id"] for r in read_complete_lines(part)] == [1, 2, 3]


def test_a_complete_json_without_newline_is_still_torn(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"sample_id": 1}\n{"sample_id": 2}')
    assert [r["sample_id"] for r in read_complete_lines(path)] == [1]
    JsonlAppender(path).close()
    assert path.read_bytes() == b'{"sample_id": 1}\n'


def test_finalize_writes_sample_order_drops_partials_and_keeps_earlier_predictions(tmp_path):
    store = PredictionStore(tmp_path / "D")
    with store.appender(1) as a:
        a.append([rec(30), rec(10)])
    with store.appender(0) as a:
        a.append([rec(20)])
    records = store.finalize([10, 20, 30, 40], store.load())  # 40 failed: left out
    assert [r["sample_id"] for r in records] == [10, 20, 30]
    assert [r["sample_id"] for r in json.loads(store.pred_path.read_text())] == [10, 20, 30]
    assert not store.partial_dir.exists()
    # a later run (e.g. a larger limit) adds to what pred.json holds
    with store.appender(0) as a:
        a.append([rec(40)])
    assert sorted(store.load()) == [10, 20, 30, 40]


def test_write_atomic_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "pred.json"
    write_atomic(path, "[]\n")
    write_atomic(path, "[1]\n")
    assert path.read_text() == "[1]\n"
    assert [p.name for p in path.parent.iterdir()] == ["pred.json"]


def test_batches_are_dealt_round_robin_and_cover_every_sample_once():
    batches = batches_of(list(range(10)), 3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    shares = [[b for i, b in enumerate(batches) if Dist(rank=r, world=2).owns(i)] for r in (0, 1)]
    assert shares == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]
