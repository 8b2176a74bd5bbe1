"""read_ahead: a background thread a bounded number of items ahead, errors and early stops handled."""

import threading
import time

import pytest

from moe_compile.errors import InvalidInput
from moe_compile.read_ahead import read_ahead


def test_items_come_in_order_from_another_thread():
    threads = []

    def items():
        for i in range(100):
            threads.append(threading.current_thread())
            yield i

    assert list(read_ahead(items(), depth=3)) == list(range(100))
    assert set(threads) != {threading.current_thread()}


def test_the_producer_stays_at_most_depth_ahead():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    stream = read_ahead(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # plenty of time to run ahead, were it unbounded
    assert len(produced) <= 1 + 2 + 1  # the one consumed, two waiting, one blocked in put
    stream.close()


def test_an_error_of_the_iterator_reaches_the_consumer_as_itself():
    def items():
        yield 1
        raise InvalidInput("checkpoint tensor 'w' is truncated")

    stream = read_ahead(items())
    assert next(stream) == 1
    with pytest.raises(InvalidInput, match="truncated"):
        next(stream)


def test_a_consumer_that_stops_early_stops_the_thread():
    def items():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    stream = read_ahead(items(), depth=2, name="test-read-ahead")
    for value in stream:
        if value == 5:
            break
    stream.close()
    assert threading.active_count() == before
    assert "test-read-ahead" not in {thread.name for thread in threading.enumerate()}
