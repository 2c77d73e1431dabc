"""DigestIndex behaves like a dict[int, int] of 64-bit digests (the idempotency index)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.digest_index import DigestIndex

digests = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(digests, digests), max_size=400), st.lists(digests, max_size=50))
def test_agrees_with_a_dict(pairs: list[tuple[int, int]], probes: list[int]) -> None:
    index = DigestIndex(buckets=4)  # tiny, so growth happens many times
    reference: dict[int, int] = {}
    for key, body in pairs:
        if index.get(key) is None:
            index.add(key, body)
            reference.setdefault(key, body)
        assert index.get(key) == reference[key]
    assert len(index) == len(reference)
    for key in [k for k, _ in pairs] + probes:
        assert index.get(key) == reference.get(key)
    assert sorted(index.items()) == sorted(reference.items())


def test_rejects_bucket_counts_that_are_not_powers_of_two() -> None:
    import pytest

    with pytest.raises(ValueError):
        DigestIndex(buckets=3)
