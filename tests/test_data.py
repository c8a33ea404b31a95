"""Records, crops, images, views: schema, geometry, one preprocessing path."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vision_opd.data.crops import clamp_box, crop_image, crop_region, draw_red_box, expand_box, grow_to_min_side, resize_to_pixels
from vision_opd.data.images import ImageError, open_image
from vision_opd.data.records import Record, RecordError, write_records
from vision_opd.data.validate import read_records
from vision_opd.data.views import HINT, ViewConfig, encode_views, prompt_text, student_view, teacher_view


def _write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) if not isinstance(r, str) else r for r in rows) + "\n", encoding="utf-8")
    return p


@pytest.fixture()
def img_path(tmp_path):
    p = tmp_path / "im.png"
    Image.new("RGB", (100, 80), (10, 20, 30)).save(p)
    return p


def test_expand_clamp_min_side():
    assert expand_box((10, 20, 30, 60), 0.05) == pytest.approx((9, 18, 31, 62))
    assert clamp_box((-5, -1, 120, 50), 100, 80) == (0, 0, 100, 50)
    # grown symmetrically, shifted inward at the border
    assert grow_to_min_side((10, 10, 14, 14), 28, 100, 80) == (0, 0, 28, 28)
    assert grow_to_min_side((50, 40, 54, 44), 20, 100, 80) == (42, 32, 62, 52)
    assert grow_to_min_side((90, 70, 99, 79), 28, 100, 80) == (72, 52, 100, 80)
    assert crop_region((40, 30, 60, 50), 100, 80, expand_ratio=0.1, min_side=4) == (38, 28, 62, 52)


def test_crop_and_resize_to_pixel_budget():
    img = Image.new("RGB", (200, 100))
    c = crop_image(img, (10, 10, 30, 20), expand_ratio=0.0, min_side=1, target_pixels=800)
    assert c.size == (40, 20)  # 20x10 region scaled by 2 to 800 pixels, aspect kept
    assert resize_to_pixels(img, None) is img


def test_red_box_drawn_outside_the_evidence():
    """The outline lies outside the expanded box: every pixel the teacher's crop shows stays as it was."""
    img = Image.new("RGB", (50, 50), (255, 255, 255))
    out = draw_red_box(img, (20, 20, 30, 30), expand_ratio=0.0, line_width=1)
    assert out.getpixel((19, 19)) == (255, 0, 0) and out.getpixel((30, 30)) == (255, 0, 0)
    assert out.getpixel((20, 20)) == (255, 255, 255) and out.getpixel((29, 29)) == (255, 255, 255)
    assert img.getpixel((19, 19)) == (255, 255, 255)  # input untouched


def _pixel_grid(w: int, h: int) -> Image.Image:
    """An image whose every pixel is unique: (x, y, x + y) as colour, so a region identifies itself."""
    img = Image.new("RGB", (w, h))
    img.putdata([(x, y, (x + y) % 256) for y in range(h) for x in range(w)])
    return img


def test_red_box_of_the_recipe_leaves_the_expanded_box_untouched():
    """A 30x30 box, expanded 5% per side, outline 5 px: no pixel of the expanded box is painted, and a ring of
    5 px around it is red (drawn inward, 41% of the box would be covered)."""
    img = _pixel_grid(100, 100)
    box = (35, 35, 65, 65)
    out = draw_red_box(img, box, expand_ratio=0.05, line_width=5)
    x1, y1, x2, y2 = 33, 33, 67, 67  # 35 - 1.5 -> 33.5 floored, 65 + 1.5 -> 66.5 ceiled
    assert out.crop((x1, y1, x2, y2)).tobytes() == img.crop((x1, y1, x2, y2)).tobytes()
    ring = [(x, y) for x in range(x1 - 5, x2 + 5) for y in range(y1 - 5, y2 + 5) if not (x1 <= x < x2 and y1 <= y < y2)]
    assert all(out.getpixel(p) == (255, 0, 0) for p in ring)
    assert out.getpixel((x1 - 6, y1 - 6)) == img.getpixel((x1 - 6, y1 - 6))  # nothing beyond the ring
    # at the image border the ring is cut off; the evidence is still untouched
    edge = draw_red_box(img, (0, 0, 20, 20), expand_ratio=0.05, line_width=5)
    assert edge.crop((0, 0, 21, 21)).tobytes() == img.crop((0, 0, 21, 21)).tobytes()


def test_teacher_crop_pixels_are_the_expanded_box():
    """The teacher's crop holds exactly the pixels of the evidence box grown by views.expand_ratio per side, then
    enlarged by views.teacher_upscale (bicubic, the same call as `resize`)."""
    img = _pixel_grid(120, 90)
    box = (40, 30, 60, 50)  # 20 x 20; expand 0.25 -> 5 px per side -> (35, 25, 65, 55)
    cfg = ViewConfig(expand_ratio=0.25, min_side=1, teacher_upscale=1.0)
    crop = crop_image(img, box, expand_ratio=cfg.expand_ratio, min_side=cfg.min_side, upscale=cfg.teacher_upscale)
    assert crop.tobytes() == img.crop((35, 25, 65, 55)).tobytes()
    big = crop_image(img, box, expand_ratio=0.25, min_side=1, upscale=2.0)
    assert big.size == (60, 60)
    assert big.tobytes() == img.crop((35, 25, 65, 55)).resize((60, 60), Image.Resampling.BICUBIC).tobytes()


def test_teacher_view_crop_is_the_expanded_box_of_the_record(tmp_path):
    img = _pixel_grid(120, 90)
    img.save(tmp_path / "grid.png")
    r = Record("g", str(tmp_path / "grid.png"), "Q?", ["a", "b"], box=(40, 30, 60, 50))
    default = teacher_view(r, ViewConfig(expand_ratio=0.25, min_side=1)).images[0]
    assert default.size == (60, 60)  # the default follows the reference recipe: the crop enlarged 2x
    assert default.tobytes() == img.crop((35, 25, 65, 55)).resize((60, 60), Image.Resampling.BICUBIC).tobytes()
    t = teacher_view(r, ViewConfig(expand_ratio=0.25, min_side=1, teacher_upscale=1.0)).images[0]
    assert t.tobytes() == img.crop((35, 25, 65, 55)).tobytes()
    # a pixel budget, when set, decides the crop's size instead of the upscale factor
    budget = teacher_view(r, ViewConfig(expand_ratio=0.25, min_side=1, teacher_pixels=45 * 45)).images[0]
    assert budget.size == (45, 45)


def test_records_round_trip_and_relative_paths(tmp_path, img_path):
    p = _write(tmp_path, [{"id": 1, "image": "im.png", "problem": "Q?", "options": ["x", "y"], "answer": "y", "bbox": [1, 2, 3, 4]}])
    (r,) = read_records(p)
    assert r.id == "1" and r.image == str(img_path.resolve()) and r.question == "Q?"
    assert r.answer == "B"  # option text normalised to its letter
    assert r.box == (1.0, 2.0, 3.0, 4.0)
    out = tmp_path / "sub" / "out.jsonl"
    (tmp_path / "sub").mkdir()
    write_records([Record(id="a", image=str(img_path), question="q")], tmp_path / "rt.jsonl")
    assert json.loads((tmp_path / "rt.jsonl").read_text())["image"] == "im.png"
    assert not out.exists()


@pytest.mark.parametrize(
    "row, message",
    [
        ({"image": "im.png", "question": "q"}, "missing 'id'"),
        ({"id": "a", "image": "im.png", "question": " "}, "empty or missing 'question'"),
        ({"id": "a", "image": "im.png", "question": "q", "box": [3, 3, 1, 1]}, "zero or negative area"),
        ({"id": "a", "image": "im.png", "question": "q", "box": [1, 2, 3]}, "list of 4 numbers"),
        ({"id": "a", "image": "im.png", "question": "q", "box": [1, 2, float("nan"), 4]}, "non-finite"),
        ({"id": "a", "image": "im.png", "question": "q", "options": ["x", "y"], "answer": "C"}, "neither an option letter"),
        ("{not json", "invalid JSON"),
    ],
)
def test_bad_records_name_file_line_and_problem(tmp_path, row, message):
    p = _write(tmp_path, [{"id": "ok", "image": "im.png", "question": "q"}, row])
    with pytest.raises(RecordError, match=message) as e:
        read_records(p)
    assert f"{p}:2" in str(e.value)


def test_duplicate_ids_rejected(tmp_path):
    p = _write(tmp_path, [{"id": "a", "image": "x.png", "question": "q"}] * 2)
    with pytest.raises(RecordError, match="duplicate id.*line 1"):
        read_records(p)


def test_open_image_modes_and_errors(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    assert open_image(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    Image.new("L", (4, 4), 100).save(tmp_path / "l.png")
    assert open_image(tmp_path / "l.png").getpixel((0, 0)) == (100, 100, 100)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png: cannot decode"):
        open_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="over the limit"):
        open_image(tmp_path / "l.png", max_pixels=10)


def test_exif_orientation_applied_before_boxes(tmp_path):
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (20, 40)


def test_views(synth_records):
    r = synth_records[0]
    s = student_view(r)
    assert s.text == prompt_text(r) and HINT not in s.text
    s2 = student_view(r, ViewConfig(red_box=True, hint=True))
    assert s2.text.endswith(HINT) and s2.images[0].tobytes() != s.images[0].tobytes()
    t = teacher_view(r, ViewConfig(teacher_pixels=112 * 112))
    assert t.text == s.text  # same text for both views unless configured
    assert abs(t.images[0].width * t.images[0].height - 112 * 112) < 300
    full = teacher_view(r, ViewConfig(teacher_source="full"))
    assert full.images[0].tobytes() == s.images[0].tobytes()
    assert teacher_view(r, ViewConfig(teacher_text="Look closely. {question}")).text.startswith("Look closely. ")
    with pytest.raises(ValueError, match="no teacher_image"):
        teacher_view(r, ViewConfig(teacher_source="given"))


def test_one_preprocessing_path(synth_records):
    """A teacher view whose image equals the student's image gives identical model inputs."""
    from vision_opd.models.tiny import build_processor

    proc = build_processor("qwen2_5_vl")
    r = synth_records[0]
    a = encode_views(proc, [student_view(r)])
    b = encode_views(proc, [teacher_view(r, ViewConfig(teacher_source="full"))])
    for k in a:
        assert (a[k] == b[k]).all(), k


# degenerate records: types, sizes and counts that cannot make sense (each must be refused with its fix)
_Q = {"image": "im.png", "question": "q"}


@pytest.mark.parametrize("row, message", [
    ({"id": "a", **_Q, "box": [True, 1, 5, 5]}, "box must contain numbers"),
    ({"id": "a", **_Q, "box": [0, 0, False, 5]}, "box must contain numbers"),
    ({"id": "a", **_Q, "box": ["1", "2", "30", "40"]}, "box must contain numbers"),
    ({"id": "a", **_Q, "box": [1, 2, None, 4]}, "box must contain numbers"),
    ({"id": "a", **_Q, "options": ["cat"], "answer": "A"}, "at least 2 options"),
    ({"id": "a", **_Q, "options": ["cat", "  "]}, "option B is empty"),
    ({"id": "a", **_Q, "options": ["cat", "dog", "Cat"]}, "options A and C are the same"),
    ({"id": "a", **_Q, "options": ["cat", 3]}, "'options' must be a non-empty list of strings"),
    ({"id": True, **_Q}, "'id' must be a string or an integer"),
    ({"id": ["a"], **_Q}, "'id' must be a string or an integer"),
    ({"id": " ", **_Q}, "'id' is empty"),
    ({"id": "a", **_Q, "answer": True}, "'answer' must be a string or a number"),
    ({"id": "a", **_Q, "answer": ["A"]}, "'answer' must be a string or a number"),
    ({"id": "a", **_Q, "answer": " "}, "'answer' is empty"),
    ({"id": "a", **_Q, "teacher_image": 5}, "'teacher_image' must be a path"),
    ({"id": "a", **_Q, "teacher_image": ""}, "'teacher_image' must be a path"),
    ({"id": "a", **_Q, "category": {"x": 1}}, "'category' must be a string"),
    ({"id": "a", "image": ["im.png"], "question": "q"}, "missing 'image'"),
    ({"id": "a", "image": "im.png", "question": 7}, "empty or missing 'question'"),
])
def test_degenerate_records_are_refused(tmp_path, img_path, row, message):
    p = _write(tmp_path, [{"id": "ok", "image": "im.png", "question": "q", "options": ["x", "y"]}, row])
    with pytest.raises(RecordError, match=message) as e:
        read_records(p, check_images=True)
    assert f"{p}:2" in str(e.value)
    from vision_opd.data.validate import validate_file

    report = validate_file(p)  # `data validate` reports the same problem on the same line, without a traceback
    assert [pr.line for pr in report.problems] == [2] and message.split("'")[0] in report.problems[0].message


def test_numpy_and_integer_boxes_are_still_numbers(tmp_path, img_path):
    import numpy as np

    from vision_opd.data.records import parse_box

    assert parse_box([np.int64(1), np.float32(2), 30, 40.5]) == (1.0, 2.0, 30.0, 40.5)
    (r,) = read_records(_write(tmp_path, [{"id": 3, **_Q, "answer": 1, "category": 2}]))
    assert r.id == "3" and r.answer == "1" and r.category == "2"
