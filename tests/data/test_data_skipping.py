import logging

import pytest
import torch
from torch.utils.data import DataLoader

from omniphi.data.skipping import SkipCollator, SkipCounter, Skipped, SkippingDataset, is_skipped


class Toy:
    """Samples 0..n-1; indices in `bad` are skipped with reason 'corrupt_image'."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            return Skipped(id=f"s{i}", reason="corrupt_image", detail="x", index=i)
        return {"id": f"s{i}", "value": i}


def collate(samples):
    return {"value": torch.tensor([s["value"] for s in samples])}


def test_marker_is_falsy_like_none():
    assert not Skipped("a", "r")
    assert is_skipped(None) and is_skipped(Skipped("a", "r")) and not is_skipped({"id": "a"})


def test_wrapper_substitutes_next_good_sample_and_carries_records():
    ds = SkippingDataset(Toy(5, bad={1, 2, 4}))
    assert ds[0] == {"id": "s0", "value": 0}
    sub = ds[1]
    assert sub["value"] == 3
    # Only the requested index is reported; s2 is reported when index 2 is drawn.
    assert [s.id for s in sub["skipped"]] == ["s1"]
    assert [s.id for s in ds[2]["skipped"]] == ["s2"]
    assert ds[4]["value"] == 0  # wraps around
    assert [s.id for s in ds[4]["skipped"]] == ["s4"]


def test_all_bad_raises_clear_error():
    ds = SkippingDataset(Toy(3, bad={0, 1, 2}))
    with pytest.raises(RuntimeError, match="consecutive bad samples.*corrupt_image"):
        ds[0]


def test_counts_survive_dataloader_workers(caplog):
    counter = SkipCounter()
    loader = DataLoader(SkippingDataset(Toy(12, bad={3, 7, 8})), batch_size=4,
                        collate_fn=SkipCollator(collate), num_workers=2)
    values = []
    with caplog.at_level(logging.WARNING, logger="omniphi.data.skipping"):
        for epoch in range(2):
            for batch in counter.iterate(loader):
                assert "skipped" not in batch  # drained before the model sees it
                values += batch["value"].tolist()
    assert len(values) == 24  # substitution keeps batches full
    assert 3 not in values and 7 not in values and 8 not in values
    assert counter.counts == {"corrupt_image": 6}  # 3 per epoch
    assert sorted(counter.ids["corrupt_image"]) == ["s3", "s7", "s8"]
    # Logged once per sample, not once per epoch.
    logged = [r.getMessage() for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(logged) == 3


def test_collator_drops_unwrapped_markers_and_none():
    batch = SkipCollator(collate)([{"id": "a", "value": 1}, Skipped("b", "missing_image"), None])
    assert batch["value"].tolist() == [1]
    counter = SkipCounter(log=False)
    counter.drain(batch)
    assert counter.counts == {"missing_image": 1, "unknown": 1}
    assert "skipped" not in batch


def test_counter_keeps_first_ids_and_summarises():
    c = SkipCounter(keep_ids=2, log=False)
    c.update(Skipped(f"x{i}", "missing_image") for i in range(4))
    c.add(Skipped("y", "bad_record"))
    assert c.total == 5
    assert c.ids["missing_image"] == ["x0", "x1"]
    assert c.summary() == "skipped 5 samples: missing_image 4 (ids: x0, x1, ...); bad_record 1 (ids: y)"
    other = SkipCounter(log=False)
    other.add(Skipped("z", "bad_record"))
    c.merge(other)
    assert c.as_dict()["by_reason"] == {"missing_image": 4, "bad_record": 2}
    assert c.ids["bad_record"] == ["y", "z"]
