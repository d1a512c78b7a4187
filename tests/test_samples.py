"""Visitors' drawings: in-memory sets, zip round trips, validation, the on-disk store, the CLI import."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from core.samples import MAX_MEMBER_BYTES, SampleError, SampleSet, SampleStore, import_samples, load_folder


@pytest.fixture(scope="module")
def digits(mnist):
    """40 real test digits, 4 per class: uint8 [40,28,28], labels [40]."""
    y = mnist.test_labels.numpy()
    idx = np.concatenate([np.flatnonzero(y == d)[:4] for d in range(10)])
    return mnist.test_images.numpy()[idx], y[idx]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_round_trip_is_exact(digits):
    images, labels = digits
    s = SampleSet()
    ids = [s.add(img, int(lab)) for img, lab in zip(images, labels)]
    assert len(s) == 40 and s.counts() == [4] * 10
    assert s.add(images[0], int(labels[0])) == ids[0] and len(s) == 40  # same drawing: no duplicate

    data = s.to_zip()
    assert data == s.to_zip()  # deterministic bytes: a re-download is the same file
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert all(n.split("/")[0] == str(s[n.split("/")[1][:-4]].label) for n in names)

    back = SampleSet.from_zip(data)
    assert sorted(back.ids()) == sorted(ids)
    for sid in ids:
        assert back[sid].label == s[sid].label
        np.testing.assert_array_equal(back[sid].image, s[sid].image)
    x, y = back.tensors()
    assert x.dtype == torch.uint8 and tuple(x.shape) == (40, 28, 28) and sorted(y.tolist()) == sorted(labels)

    back.remove(ids[0])
    assert ids[0] not in back and len(back) == 39
    with pytest.raises(KeyError):
        back.remove(ids[0])


@pytest.mark.parametrize("label", [10, -1, 3.5, "x", "12", True, None])
def test_bad_labels_refused(digits, label):
    with pytest.raises(SampleError, match="0-9"):
        SampleSet().add(digits[0][0], label)


def test_bad_images_refused():
    s = SampleSet()
    with pytest.raises(SampleError, match="28x28"):
        s.add(np.zeros((27, 28), np.uint8), 3)
    with pytest.raises(SampleError, match=r"\[0, 1\]"):
        s.add(np.full((28, 28), 2.0, np.float32), 3)
    assert len(s) == 0


@pytest.mark.parametrize("name", ["../evil.png", "3/../../evil.png", "/etc/3.png", "C:/3/x.png", "3\\..\\x.png"])
def test_traversal_names_refused(digits, name, tmp_path):
    data = _zip({"3/ok.png": _png(digits[0][12]), name: _png(digits[0][13])})
    with pytest.raises(SampleError, match="unsafe member name"):
        SampleSet.from_zip(data)
    zp = tmp_path / "up.zip"
    zp.write_bytes(data)
    with pytest.raises(SampleError):
        import_samples(zp, tmp_path / "store")
    assert not (tmp_path / "store").exists()  # validation happens before anything is written


def test_bad_zip_contents_refused(digits):
    img = _png(digits[0][0])
    cases = {
        "label folder": ({"10/a.png": img}, "not a label 0-9"),
        "no label": ({"a.png": img}, "no label"),
        "undecodable": ({"3/a.png": b"not a png at all"}, "3/a.png: not a decodable image"),
        "csv label": ({"a.png": img, "labels.csv": b"file,label\na.png,11\n"}, "line 2"),
        "empty": ({"readme.txt": b"hi"}, "no PNG"),
        "too big": ({"3/a.png": b"\0" * (MAX_MEMBER_BYTES + 1)}, "limit per file"),
    }
    for what, (members, msg) in cases.items():
        with pytest.raises(SampleError, match=msg):
            SampleSet.from_zip(_zip(members))
    with pytest.raises(SampleError, match="not a valid zip"):
        SampleSet.from_zip(b"PK\x03\x04 garbage")


def test_lenient_import_formats(digits, tmp_path):
    """labels.csv instead of folders, a top-level folder, big black-on-white RGBA drawings."""
    images, labels = digits
    big = Image.fromarray(255 - images[7]).resize((280, 280), Image.Resampling.NEAREST).convert("RGBA")
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    members = {"mine/a.png": _png(images[0]), "mine/b.png": buf.getvalue(),
               "mine/labels.csv": f"file,label\na.png,{labels[0]}\nb.png,{labels[7]}\n".encode(),
               "mine/__MACOSX/._a.png": b"junk", "mine/.DS_Store": b"junk"}
    s = SampleSet.from_zip(_zip(members))
    assert len(s) == 2 and sorted(x.label for x in s) == sorted([int(labels[0]), int(labels[7])])
    restored = next(x for x in s if x.label == labels[7] and not np.array_equal(x.image, images[0]))
    # Downscaled back to 28x28 and flipped to white-on-black: close to the original digit.
    assert np.abs(restored.image.astype(int) - images[7].astype(int)).mean() < 3


def test_split_is_stratified_and_disjoint(digits):
    images, labels = digits
    s = SampleSet()
    for img, lab in zip(images, labels):
        s.add(img, int(lab))
    s.add(np.zeros((28, 28), np.uint8), 0)  # a digit drawn once more than the others: 5 zeros
    train, test = s.split(0.3, seed=1)
    assert not set(train.ids()) & set(test.ids()) and len(train) + len(test) == len(s)
    assert test.counts() == [2] + [1] * 9
    assert s.split(0.3, seed=1)[1].ids() == test.ids()  # seeded


def test_store_is_atomic_and_round_trips(digits, tmp_path):
    images, labels = digits
    store = SampleStore(tmp_path / "samples")
    sid = store.add(images[0], int(labels[0]))
    assert (tmp_path / "samples" / str(labels[0]) / f"{sid}.png").is_file()
    store.add(images[0], int(labels[0]))
    assert len(store) == 1
    with pytest.raises(SampleError):
        store.add(images[1], 42)
    loaded = store.load()
    np.testing.assert_array_equal(loaded[sid].image, images[0])
    assert not [p for p in (tmp_path / "samples").rglob("*") if p.name.endswith(".tmp")]
    store.remove(sid)
    assert len(store) == 0


def test_cli_samples_import_and_export(digits, tmp_path, capsys):
    from core.cli import main

    images, labels = digits
    src = tmp_path / "src"
    for i, (img, lab) in enumerate(zip(images[:20], labels[:20])):
        (src / str(lab)).mkdir(parents=True, exist_ok=True)
        (src / str(lab) / f"d{i}.png").write_bytes(_png(img))
    store = tmp_path / "store"
    assert main(["samples", "import", str(src), "--out", str(store), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["read"] == 20 and r["new"] == 20 and r["total"] == 20
    assert main(["samples", "export", str(store), "--out", str(tmp_path / "s.zip"), "--json"]) == 0
    capsys.readouterr()
    assert len(load_folder(tmp_path / "s.zip")) == 20
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "a.png").write_bytes(_png(images[0]))
    assert main(["samples", "import", str(tmp_path / "bad"), "--out", str(store)]) == 1
    assert "not a label 0-9" in capsys.readouterr().err


def test_relabel_to_a_bad_label_keeps_the_sample(digits):
    imgs, labels = digits
    s = SampleSet()
    sid = s.add(imgs[0], int(labels[0]))
    for bad in (11, -1, "x", 3.5):
        with pytest.raises(SampleError):
            s.relabel(sid, bad)
        assert len(s) == 1 and sid in s  # the drawing is still there, with its old label
    new = s.relabel(sid, (int(labels[0]) + 1) % 10)
    assert len(s) == 1 and new in s and sid not in s
