import json

import numpy as np
import pytest
from PIL import Image

from omniphi.data.llava import DataFileError, LlavaDataset, RecordStore, parse_record
from omniphi.data.skipping import SkipCollator, SkipCounter, Skipped, SkippingDataset


def kinds(message):
    return [p["type"] for p in message["content"]]


def texts(message):
    return [p["text"] for p in message["content"] if p["type"] == "text"]


def pixel(image):
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return image.getpixel((0, 0))


def test_pretrain_plain_mode_drops_the_instruction(fixtures):
    ds = LlavaDataset(fixtures / "llava/pretrain.json", fixtures / "llava/images", mode="plain")
    assert len(ds) == 4
    s = ds[0]
    assert s["id"] == "000000001"
    user, answer = s["messages"]
    assert user["role"] == "user" and kinds(user) == ["image"]
    assert pixel(user["content"][0]["image"]) == (255, 0, 0)
    assert answer == {"role": "assistant", "content": [{"type": "text", "text": "a red square on a red background"}]}
    assert pixel(ds[2]["messages"][0]["content"][0]["image"]) == (0, 0, 255)


def test_pretrain_conversation_mode_keeps_the_image_where_the_token_is(fixtures):
    ds = LlavaDataset(fixtures / "llava/pretrain.json", fixtures / "llava/images")
    user = ds[0]["messages"][0]
    assert kinds(user) == ["text", "image"]  # "...photo.\n<image>"
    assert texts(user) == ["Render a clear and concise summary of the photo."]
    assert kinds(ds[2]["messages"][0]) == ["image", "text"]


def test_missing_and_corrupt_images_are_counted_skips(fixtures, caplog):
    ds = LlavaDataset(fixtures / "llava/pretrain.json", fixtures / "llava/images", mode="plain")
    missing, corrupt = ds[1], ds[3]
    assert isinstance(missing, Skipped) and missing.reason == "missing_image" and missing.id == "000000404"
    assert "000000404.png" in missing.detail
    assert isinstance(corrupt, Skipped) and corrupt.reason == "corrupt_image" and corrupt.id == "corrupt-1"

    counter = SkipCounter()
    collate = SkipCollator(lambda samples: {"ids": [s["id"] for s in samples]})
    wrapped = SkippingDataset(ds)
    with caplog.at_level("WARNING"):
        batch = counter.drain(collate([wrapped[i] for i in range(4)]))
    assert batch["ids"] == ["000000001", "000000002", "000000002", "000000001"]
    assert counter.counts == {"missing_image": 1, "corrupt_image": 1}
    assert counter.ids == {"missing_image": ["000000404"], "corrupt_image": ["corrupt-1"]}
    assert "000000404" in caplog.text and "corrupt-1" in caplog.text


def test_instruct_multi_turn(fixtures):
    ds = LlavaDataset(fixtures / "llava/instruct.json", fixtures / "llava/coco/train2017")
    s = ds[0]
    roles = [m["role"] for m in s["messages"]]
    assert roles == ["user", "assistant"] * 3
    assert kinds(s["messages"][0]) == ["image", "text"]
    assert pixel(s["messages"][0]["content"][0]["image"]) == (0, 255, 0)
    # Only the first turn has the image; later questions are text.
    assert all(kinds(m) == ["text"] for m in s["messages"][1:])
    assert texts(s["messages"][4]) == ["What could it be used for?"]
    assert texts(s["messages"][5]) == ["It could be a colour swatch."]
    assert kinds(ds[1]["messages"][0]) == ["text", "image"]


def test_llava_15_mix(fixtures):
    ds = LlavaDataset(fixtures / "llava/mix.json", fixtures / "llava")
    by_id = {}
    for i in range(len(ds)):
        s = ds[i]
        by_id[s.id if isinstance(s, Skipped) else s["id"]] = s

    coco = by_id["000000000009"]
    assert kinds(coco["messages"][0]) == ["image", "text"]
    assert texts(coco["messages"][0]) == ["What colour is it?\nAnswer the question using a single word or phrase."]
    assert len(coco["messages"]) == 4

    text_only = by_id["i6IyJda_0"]
    assert all(p["type"] == "text" for m in text_only["messages"] for p in m["content"])
    assert [m["role"] for m in text_only["messages"]] == ["user", "assistant", "user", "assistant"]
    assert text_only["meta"] == {"model": ""}

    middle = by_id["middle-1"]["messages"][0]
    assert kinds(middle) == ["text", "image", "text"]
    assert texts(middle) == ["Compare this picture", "with a lemon."]
    assert pixel(middle["content"][1]["image"]) == (255, 255, 0)

    sys_msgs = by_id["sys-1"]["messages"]
    assert [m["role"] for m in sys_msgs] == ["system", "user", "assistant"]
    assert texts(sys_msgs[0]) == ["You are a terse assistant."]

    # Opening assistant turn and trailing unanswered question are dropped.
    gpt_first = by_id["gptfirst-1"]["messages"]
    assert [(m["role"], texts(m)) for m in gpt_first] == [("user", ["What is 2+2?"]), ("assistant", ["4"])]

    broken = by_id["broken-1"]
    assert isinstance(broken, Skipped) and broken.reason == "bad_record"
    assert "placeholder" in broken.detail


def test_mix_plain_mode_skips_text_only_records(fixtures):
    ds = LlavaDataset(fixtures / "llava/mix.json", fixtures / "llava", mode="plain")
    assert ds[0]["messages"][1]["content"][0]["text"] == "Green"
    assert isinstance(ds[1], Skipped) and ds[1].reason == "bad_record"


def test_spoken_json_audio_fills_placeholders_in_order(fixtures):
    ds = LlavaDataset(fixtures / "llava/spoken.json", image_folder=fixtures, audio_folder=fixtures)
    one = ds[0]["messages"][0]
    assert kinds(one) == ["image", "audio"]
    audio = one["content"][1]["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
    two = ds[1]["messages"][0]
    assert kinds(two) == ["text", "audio", "text", "audio"]
    a, b = two["content"][1]["audio"], two["content"][3]["audio"]
    assert len(a) > len(b)  # the first listed clip is the longer sentence
    assert len(b) == len(audio)  # same file as sample 0's clip


def test_media_without_placeholder_goes_first_and_extra_placeholder_is_bad():
    rec = {"image": "a.png", "conversations": [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."}]}
    msgs = parse_record(rec)
    assert msgs[0]["content"] == [{"type": "image", "path": "a.png"}, {"type": "text", "text": "What is it?"}]
    rec["conversations"][0]["value"] = "<image> <image> What?"
    with pytest.raises(ValueError, match="placeholder #2"):
        parse_record(rec)
    with pytest.raises(ValueError, match="unknown speaker"):
        parse_record({"conversations": [{"from": "robot", "value": "x"}]})
    with pytest.raises(ValueError, match="no assistant"):
        parse_record({"conversations": [{"from": "human", "value": "x"}]})


def test_jsonl_records_and_bad_lines(tmp_path, fixtures):
    img = (fixtures / "llava/images/00000/000000001.png").resolve()
    good = {"id": "j1", "image": str(img), "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Red."}]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n\n" + json.dumps({**good, "id": "j2"}) + "\n")
    ds = LlavaDataset(path)
    assert len(ds) == 3
    assert ds[0]["id"] == "j1" and pixel(ds[0]["messages"][0]["content"][0]["image"]) == (255, 0, 0)
    assert isinstance(ds[1], Skipped) and ds[1].reason == "bad_record" and ds[1].id == "data:1"
    assert ds[2]["id"] == "j2"


def test_record_store_is_compact_and_errors_are_clear(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"id": i, "conversations": []} for i in range(1000)]))
    store = RecordStore(path)
    assert len(store) == 1000 and store[999]["id"] == 999
    assert isinstance(store._blob, bytes)
    with pytest.raises(DataFileError, match="not found"):
        RecordStore(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataFileError, match="not valid JSON"):
        RecordStore(tmp_path / "bad.json")
