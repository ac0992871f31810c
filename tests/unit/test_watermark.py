import pytest

from worker.feed.checkpoint import Watermark


def test_starts_at_the_given_seq():
    assert Watermark("5-abc").seq == "5-abc"
    assert Watermark().seq is None


def test_advances_only_over_a_contiguous_done_prefix():
    mark = Watermark("0")
    a, b, c = mark.add("1-x"), mark.add("2-x"), mark.add("3-x")
    assert mark.complete(b) == 0
    assert mark.seq == "0"  # 1 still in flight holds it back
    assert mark.complete(c) == 0
    assert mark.complete(a) == 3
    assert mark.seq == "3-x"
    assert len(mark) == 0


def test_seqs_are_never_compared():
    # Opaque seqs in an order no comparison would give: the feed order decides.
    mark = Watermark()
    first, second = mark.add("9-zzz"), mark.add("10-aaa")
    mark.complete(first)
    assert mark.seq == "9-zzz"
    mark.complete(second)
    assert mark.seq == "10-aaa"


def test_null_seq_keeps_the_last_known():
    mark = Watermark("1")
    mark.complete(mark.add(None))
    assert mark.seq == "1"


def test_len_counts_entries_held_behind_an_unfinished_one():
    mark = Watermark()
    tokens = [mark.add(str(i)) for i in range(5)]
    for token in tokens[1:]:
        mark.complete(token)
    assert len(mark) == 5
    assert mark.complete(tokens[0]) == 5
    assert len(mark) == 0


def test_completing_twice_or_unknown_token_is_an_error():
    mark = Watermark()
    token = mark.add("1")
    mark.complete(token)
    with pytest.raises(ValueError):
        mark.complete(token)
    with pytest.raises(ValueError):
        mark.complete(99)
