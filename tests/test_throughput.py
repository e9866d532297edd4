from sapo_core.records import Completion
from sapo_core.throughput import TokenMeter


def test_the_meter_counts_tokens_and_seconds_until_read_then_starts_again():
    meter = TokenMeter()
    meter.add(
        [Completion("a", num_tokens=3), None, Completion("b", num_tokens=None), Completion("c", num_tokens=5)], 2.0
    )
    meter.add([Completion("d", num_tokens=2)], 0.5)
    assert meter.read() == {"tokens": 10.0, "tokens_per_second": 4.0, "seconds": 2.5}
    assert meter.read() == {"tokens": 0.0, "tokens_per_second": 0.0, "seconds": 0.0}
