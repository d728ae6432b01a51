"""``unetpp package`` / ``check-model`` / MODEL.zip as a run (issue 24): a package is untrusted input."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

import unetpp
from unetpp.cli import main
from unetpp.errors import RunError
from unetpp.inference.unpack import MANIFEST, open_package

from test_prune import pruned_run


def run_cli(capsys, *argv):
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A tiny pruned run and its package; the cache of extracted packages is private."""
    tmp = tmp_path_factory.mktemp("pkg")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETPP_CACHE", str(tmp / "cache"))
    run, ds = pruned_run(tmp)
    zip_path = tmp / "model.zip"
    try:
        main(["package", str(run), "--out", str(zip_path), "--data", str(ds.root), "--licence", "CC-BY-4.0",
              "--intended-use", "Finding blobs."])
    except SystemExit as e:
        assert e.code == 0
    yield run, ds, zip_path
    mp.undo()


def test_the_package_describes_itself(packaged):
    run, ds, zip_path = packaged
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read(MANIFEST))
        card = z.read("README.md").decode()
        labels = z.read("labels.csv").decode().splitlines()
        assert z.read("model.safetensors") == (run / "model.safetensors").read_bytes()
    assert {"config.json", "model.safetensors", "prune.json", "trust.json", "labels.csv", "README.md"} <= names
    assert not any(n.startswith("last/") for n in names)  # never Adam's state
    assert manifest["kind"] == "run" and manifest["chosen"] == json.loads((run / "prune.json").read_text())["chosen"]
    assert set(manifest["files"]) == names - {MANIFEST}
    test = manifest["test"]
    assert test["input"] in names and test["expected"] in names and test["case"] in ds.case_names
    assert card.startswith("---\nlicense: CC-BY-4.0\n") and "Not for clinical use" in card and "Finding blobs." in card
    assert "| L1" in card and "peak MB" in card and "US11164067B2" in card
    assert labels == ["value,name,colour,code", "0,background,#000000,", "1,foreground,#ff0000,"]
    assert zip_path.stat().st_size < 5 * 2**20


def test_check_model_passes_and_the_zip_predicts_without_the_run(packaged, tmp_path, capsys):
    run, ds, zip_path = packaged
    code, err = run_cli(capsys, "check-model", zip_path)
    assert code == 0 and "passed" in err and "Dice label 1: 1.0000" in err, err
    image = ds.root / "images" / f"{ds.case_names[0]}.png"
    code, err = run_cli(capsys, "predict", run, image, "--out", tmp_path / "from_run", "--device", "cpu")
    assert code == 0, err
    gone = tmp_path / "gone.zip"
    shutil.copy(zip_path, gone)
    code, err = run_cli(capsys, "predict", gone, image, "--out", tmp_path / "from_zip", "--device", "cpu",
                        "--uncertainty")
    assert code == 0, err
    a = np.asarray(Image.open(tmp_path / "from_run" / image.name))
    b = np.asarray(Image.open(tmp_path / "from_zip" / image.name))
    assert np.array_equal(a, b) and (tmp_path / "from_zip" / "qc.csv").is_file()
    predictor = unetpp.load(gone)
    assert predictor.trust is not None and predictor.choice == unetpp.load(run).choice
    code, err = run_cli(capsys, "evaluate", gone, ds.root)
    assert code == 0, err


def _rezip(src, dst, change):
    """A copy of package ``src`` with ``change(members: dict, manifest: dict)`` applied."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    change(members, manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr(MANIFEST, json.dumps(manifest))
        for n, b in members.items():
            z.writestr(n, b, zipfile.ZIP_DEFLATED)
    return dst


def _add(members, manifest, name, data):
    members[name] = data
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize("name, change, message", [
    ("slip", lambda m, f: _add(m, f, "../evil.json", b"{}"), "../evil.json: a path that leaves the archive"),
    ("abs", lambda m, f: _add(m, f, "/etc/evil.json", b"{}"), "/etc/evil.json: a path that leaves the archive"),
    ("pickle", lambda m, f: _add(m, f, "model.pt", b"\x80\x04K\x01."), "model.pt: a pickle or code file"),
    ("unlisted", lambda m, f: m.__setitem__("notes.txt", b"hi"), "notes.txt: not listed in unetpp-package.json"),
    ("missing", lambda m, f: m.pop("labels.csv"), "labels.csv: listed in unetpp-package.json but missing"),
    ("tampered", lambda m, f: m.__setitem__("config.json", m["config.json"].replace(b'"unetpp"', b'"unet"', 1)),
     "config.json: does not match its SHA-256"),
    ("bomb", lambda m, f: _add(m, f, "huge.txt", b"0" * (20 * 2**20)), "huge.txt: compressed"),
])
def test_a_bad_package_is_refused_in_one_line_naming_the_member(packaged, tmp_path, name, change, message):
    _, _, zip_path = packaged
    bad = _rezip(zip_path, tmp_path / f"{name}.zip", change)
    with pytest.raises(RunError) as e:
        open_package(bad, dest=tmp_path / "out")
    assert len(e.value.problems) == 1 and message in e.value.problems[0] and str(bad) in e.value.problems[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.json").exists()


def test_a_link_and_weights_that_do_not_fit_are_refused(packaged, tmp_path):
    _, _, zip_path = packaged
    link = tmp_path / "link.zip"
    shutil.copy(zip_path, link)
    with zipfile.ZipFile(link, "a") as z:
        info = zipfile.ZipInfo("link.json")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(RunError, match="link.json: a link; refused"):
        open_package(link, dest=tmp_path / "o1")

    other = unetpp.create_model("unetpp", depth=2, base_filters=4)  # another shape than the config's
    from unetpp.run import save_weights

    save_weights(tmp_path / "w.safetensors", other)
    wrong = _rezip(zip_path, tmp_path / "wrong.zip",
                   lambda m, f: _add(m, f, "model.safetensors", (tmp_path / "w.safetensors").read_bytes()))
    with pytest.raises(RunError) as e:
        unetpp.load(wrong)
    assert str(wrong) in e.value.problems[0] and "model.safetensors" in e.value.problems[0]
    with pytest.raises(RunError, match="not a zip archive"):
        (tmp_path / "plain.zip").write_bytes(b"not a zip")
        unetpp.load(tmp_path / "plain.zip")
