"""PromptStream: each epoch is a permutation, epochs reshuffle, and a saved cursor resumes exactly."""
import pytest

from prime_megatron.data.stream import PromptStream


def _draw(stream, sizes):
    return [stream.next_batch(size) for size in sizes]


def test_each_epoch_visits_every_item_once_and_reshuffles():
    stream = PromptStream(list(range(10)), batch_size=5, seed=3)
    epochs = [sum(_draw(stream, [5, 5]), []) for _ in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh shuffle per epoch (10! orders: a tie is ~3e-7)
    assert PromptStream(list(range(10)), batch_size=5, seed=4).next_batch(10) != epochs[0]


def test_batches_cross_epoch_boundaries():
    items = list(range(7))
    stream = PromptStream(items, batch_size=3, seed=0)
    flat = sum(_draw(stream, [3, 3, 3, 3, 2]), [])  # 14 items = exactly two epochs
    assert sorted(flat[:7]) == items and sorted(flat[7:]) == items
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["position"] == 7


def test_unshuffled_stream_is_in_file_order():
    stream = PromptStream(list("abcde"), batch_size=2, seed=0, shuffle=False)
    assert _draw(stream, [2, 2, 2]) == [["a", "b"], ["c", "d"], ["e", "a"]]


@pytest.mark.parametrize("cut", [0, 1, 4, 9])
def test_resume_is_exact(cut):
    sizes = [4, 3, 6, 1, 5, 4, 7, 2, 4, 3]  # uneven, as the filter's refills are; crosses several epochs
    reference = _draw(PromptStream(list(range(11)), batch_size=4, seed=7), sizes)
    first = PromptStream(list(range(11)), batch_size=4, seed=7)
    before = _draw(first, sizes[:cut])
    state = first.state_dict()
    resumed = PromptStream(list(range(11)), batch_size=4, seed=7)
    resumed.load_state_dict(state)
    assert before + _draw(resumed, sizes[cut:]) == reference


def test_resume_rejects_a_different_dataset_or_seed():
    state = PromptStream(list(range(5)), batch_size=2, seed=1).state_dict()
    with pytest.raises(ValueError, match="num_items=5 but this stream has num_items=6"):
        PromptStream(list(range(6)), batch_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1 but this stream has seed=2"):
        PromptStream(list(range(5)), batch_size=2, seed=2).load_state_dict(state)
