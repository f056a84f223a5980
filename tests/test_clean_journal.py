"""The review journal: moves never lose, duplicate or overwrite a file, survive crashes, and undo."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import write_class_folders
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vistrain.clean.app import suspects
from vistrain.clean.audit import AuditConfig, audit
from vistrain.clean.journal import QUARANTINE, CleanError, Journal, safe_path
from vistrain.data.dataset import DataConfig

CLASSES = ["cats", "dogs", "birds"]


class Crash(Exception):
    """Stands for the process dying at a chosen point of a move."""


def _make_data(root: Path) -> dict[str, bytes]:
    """12 tiny files; the same names recur across classes so that moves collide."""
    files = {}
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(4):
            rel = f"{c}/img_{i}.jpg"
            files[rel] = f"{c}-{i}-{'x' * (ci * 7 + i)}".encode()
            (root / rel).write_bytes(files[rel])
    return files


def _on_disk(root: Path) -> dict[str, bytes]:
    """Every data file, in class folders or the quarantine (the journal's own files excepted)."""
    out = {}
    for folder, _, names in os.walk(root):
        if Path(folder) == root / QUARANTINE:
            continue
        for n in names:
            p = Path(folder, n)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def _assert_each_original_once(disk: dict[str, bytes], originals: dict[str, bytes]) -> None:
    assert sorted(disk.values()) == sorted(originals.values())  # byte-identical, none lost, none doubled


ACTION = st.tuples(
    st.sampled_from(["relabel", "quarantine", "undo", "undo", "keep"]),
    st.integers(0, 1000),  # which file
    st.integers(0, 2),  # which class
    st.sampled_from([None] * 6 + ["intent", "moved"]),  # crash point, if any
)


# No shrinking: a failing sequence is printed as found (shrinking hundreds of file moves takes minutes).
@settings(max_examples=5, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(ACTION, min_size=150, max_size=300))
def test_random_actions_with_crashes_keep_every_file_exactly_once(actions):
    # In memory where available: the property is about bookkeeping; fsync to a busy disk only slows it.
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        root = Path(tmp)
        originals = _make_data(root)
        journal = Journal(root)
        disk = _on_disk(root)
        for kind, which, cls, crash_at in actions:

            def fault(point, crash_at=crash_at):
                if point == crash_at:
                    raise Crash(point)

            journal.fault = fault
            present = sorted(p for p in disk if not p.startswith(QUARANTINE))
            try:
                if kind == "undo":
                    journal.undo()
                elif present:
                    rel = present[which % len(present)]
                    if kind == "keep":
                        journal.keep(rel)
                    elif kind == "quarantine":
                        journal.quarantine(rel)
                    elif rel.split("/")[0] != CLASSES[cls]:
                        journal.relabel(rel, CLASSES[cls], CLASSES)
            except Crash:
                journal = Journal(root)  # the next start recovers
                assert len(journal.recovered) == 1
            disk = _on_disk(root)
            _assert_each_original_once(disk, originals)
        # Undoing everything restores the original layout exactly.
        journal = Journal(root)
        while journal.undo() is not None:
            pass
        assert _on_disk(root) == originals


def test_relabel_quarantine_undo_and_manifest(tmp_path):
    originals = _make_data(tmp_path)
    j = Journal(tmp_path)
    j.relabel("cats/img_0.jpg", "dogs", CLASSES)
    # dogs/img_0.jpg exists: the moved file gets a free name, nothing is overwritten.
    assert (tmp_path / "dogs/img_0_1.jpg").read_bytes() == originals["cats/img_0.jpg"]
    assert (tmp_path / "dogs/img_0.jpg").read_bytes() == originals["dogs/img_0.jpg"]
    j.quarantine("dogs/img_0.jpg")
    manifest = json.loads((tmp_path / QUARANTINE / "manifest.json").read_text())
    assert manifest["files"] == {f"{QUARANTINE}/dogs/img_0.jpg": {
        "original": "dogs/img_0.jpg", "time": pytest.approx(manifest["files"][f"{QUARANTINE}/dogs/img_0.jpg"]["time"]),
        "action": 2}}
    assert j.location("cats/img_0.jpg") == "dogs/img_0_1.jpg"
    assert j.undo()["undoes_action"] == "quarantine"
    assert json.loads((tmp_path / QUARANTINE / "manifest.json").read_text())["files"] == {}
    assert j.undo()["undoes_action"] == "relabel"
    assert j.undo() is None
    assert _on_disk(tmp_path) == originals
    # The journal is append-only: 3 actions, each an intent and a done record; nothing rewritten.
    lines = (tmp_path / QUARANTINE / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["op"] for x in lines] == ["intent", "done"] * 4


def test_relabel_from_a_sub_folder_moves_to_the_other_class_folder_itself(tmp_path):
    originals = _make_data(tmp_path)
    (tmp_path / "cats" / "2019" / "dogs").mkdir(parents=True)  # a sub-folder may even be named like a class
    for rel in ("cats/2019/a.jpg", "cats/2019/dogs/b.jpg"):
        (tmp_path / rel).write_bytes(rel.encode())
    j = Journal(tmp_path)
    # Both are cats (the class folder gives the label): into dogs/ itself, not into a folder inside cats/.
    j.relabel("cats/2019/a.jpg", "dogs", CLASSES)
    j.relabel("cats/2019/dogs/b.jpg", "dogs", CLASSES)
    assert (tmp_path / "dogs/a.jpg").read_bytes() == b"cats/2019/a.jpg"
    assert (tmp_path / "dogs/b.jpg").read_bytes() == b"cats/2019/dogs/b.jpg"
    with pytest.raises(CleanError, match="labelled 'dogs' already"):
        j.relabel("dogs/a.jpg", "dogs", CLASSES)
    j.undo()
    j.undo()
    assert (tmp_path / "cats/2019/a.jpg").exists() and (tmp_path / "cats/2019/dogs/b.jpg").exists()
    assert {k: v for k, v in _on_disk(tmp_path).items() if "2019" not in k} == originals


def test_crash_after_move_is_completed_on_next_start_and_can_be_undone(tmp_path):
    originals = _make_data(tmp_path)

    def die(point):
        if point == "moved":
            raise Crash(point)

    with pytest.raises(Crash):
        Journal(tmp_path, fault=die).quarantine("birds/img_2.jpg")
    j = Journal(tmp_path)
    assert j.recovered == ["quarantine of birds/img_2.jpg: completed (it had moved before the stop)"]
    assert (tmp_path / QUARANTINE / "birds/img_2.jpg").exists()
    assert j.undo()["undoes_action"] == "quarantine"
    assert _on_disk(tmp_path) == originals


def test_a_record_cut_short_is_ignored(tmp_path):
    originals = _make_data(tmp_path)
    (tmp_path / QUARANTINE).mkdir()
    (tmp_path / QUARANTINE / "journal.jsonl").write_text('{"op": "intent", "id": 1, "action": "quar')
    j = Journal(tmp_path)
    assert j.quarantine("cats/img_1.jpg")["id"] == 1
    # The new records start on a line of their own, so a later start reads them back.
    assert Journal(tmp_path).undo()["undoes"] == 1
    assert _on_disk(tmp_path) == originals


@pytest.mark.parametrize("bad", ["../outside.jpg", "cats/../../outside.jpg", "/etc/passwd", "", "cats/\x00.jpg",
                                 "link/secret.jpg", "escape.jpg"])
def test_paths_leading_outside_the_data_folder_are_refused(tmp_path, bad):
    root = tmp_path / "data"
    _make_data(root)
    (tmp_path / "outside.jpg").write_bytes(b"not yours")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/secret.jpg").write_bytes(b"secret")
    os.symlink(tmp_path / "elsewhere", root / "link")
    os.symlink(tmp_path / "outside.jpg", root / "escape.jpg")
    with pytest.raises(CleanError, match="refused|outside"):
        safe_path(root, bad)
    with pytest.raises(CleanError):
        Journal(root).quarantine(bad)
    assert (tmp_path / "outside.jpg").read_bytes() == b"not yours"
    assert (tmp_path / "elsewhere/secret.jpg").read_bytes() == b"secret"


def test_relabel_to_unknown_class_or_from_quarantine_is_refused(tmp_path):
    _make_data(tmp_path)
    j = Journal(tmp_path)
    with pytest.raises(CleanError, match="not one of the classes"):
        j.relabel("cats/img_0.jpg", "fish", CLASSES)
    j.quarantine("cats/img_0.jpg")
    with pytest.raises(CleanError, match="already in the quarantine"):
        j.quarantine(f"{QUARANTINE}/cats/img_0.jpg")


def test_cli_undo_reverses_the_last_actions(tmp_path, capsys):
    from vistrain.cli import main

    originals = _make_data(tmp_path)
    j = Journal(tmp_path)
    j.quarantine("cats/img_2.jpg")
    j.relabel("dogs/img_3.jpg", "birds", CLASSES)
    assert main(["clean", str(tmp_path), "--undo"]) == 0
    assert "undone: relabel" in capsys.readouterr().out
    assert (tmp_path / "dogs/img_3.jpg").exists() and not (tmp_path / "cats/img_2.jpg").exists()
    assert main(["clean", str(tmp_path), "--undo", "5"]) == 0
    assert "nothing (more) to undo" in capsys.readouterr().out
    assert _on_disk(tmp_path) == originals


def _ids(root: Path) -> list[int]:
    lines = (root / QUARANTINE / "journal.jsonl").read_text().splitlines()
    return [json.loads(x)["id"] for x in lines if json.loads(x)["op"] == "intent"]


def test_two_journals_on_one_folder_follow_the_file(tmp_path):
    """The page and `clean --undo` at once: each decides from the journal file, not from what it
    remembers, so ids stay unique and each undo reverses the latest action still in effect."""
    originals = _make_data(tmp_path)
    page, cli = Journal(tmp_path), Journal(tmp_path)
    page.quarantine("cats/img_0.jpg")
    assert cli.undo()["undoes"] == 1  # the page's action, though cli opened before it
    assert (tmp_path / "cats/img_0.jpg").exists()
    assert page.undo() is None  # was: "cannot undo the quarantine ...: ... is gone"
    assert page.relabel("dogs/img_1.jpg", "birds", CLASSES)["id"] == 3  # was 2, the cli's undo's id
    assert cli.keep("birds/img_2.jpg")["id"] == 4
    assert page.quarantine("cats/img_3.jpg")["id"] == 5
    assert cli.undo()["undoes"] == 5
    assert page.undo()["undoes"] == 4
    assert cli.undo()["undoes"] == 3
    assert page.undo() is None and cli.undo() is None
    assert sorted(_ids(tmp_path)) == list(range(1, 9)) == sorted(set(_ids(tmp_path)))
    assert _on_disk(tmp_path) == originals
    assert json.loads((tmp_path / QUARANTINE / "manifest.json").read_text())["files"] == {}


def test_a_move_in_progress_elsewhere_is_waited_for_not_recovered(tmp_path):
    """While one process is between intent and done, another one waits for the lock: it neither
    takes the move for a crashed one (and aborts it) nor gives its own action the same id."""
    import threading

    _make_data(tmp_path)
    in_move, go_on = threading.Event(), threading.Event()

    def pause(point):
        if point == "intent":
            in_move.set()
            assert go_on.wait(10)

    slow = threading.Thread(target=Journal(tmp_path, fault=pause).quarantine, args=("cats/img_1.jpg",))
    slow.start()
    assert in_move.wait(10)
    other: dict = {}

    def keep_meanwhile():
        other["journal"] = j = Journal(tmp_path)
        other["kept"] = j.keep("dogs/img_1.jpg")

    second = threading.Thread(target=keep_meanwhile)
    second.start()
    second.join(0.5)
    waited = second.is_alive()  # it must wait: the journal holds a move that is still going on
    go_on.set()
    slow.join(10)
    second.join(10)
    assert waited
    assert other["journal"].recovered == []  # was: "quarantine of cats/img_1.jpg: not applied"
    assert other["kept"]["id"] == 2
    assert (tmp_path / QUARANTINE / "cats/img_1.jpg").exists()
    assert other["journal"].undo()["undoes"] == 2 and other["journal"].undo()["undoes"] == 1
    assert sorted(_ids(tmp_path)) == [1, 2, 3, 4]
    assert (tmp_path / "cats/img_1.jpg").exists()


def test_quarantining_the_offered_copies_leaves_the_originals_in_place(tmp_path):
    """The audit's duplicate findings say which file to keep; quarantining every other one (what
    the page offers) moves the copies only, and undo brings each back byte for byte."""
    root = write_class_folders(tmp_path / "photos", per_class=3, classes=("circles", "squares"))
    copies = {"circles/circles_0 copy.png": "circles/circles_0.png",
              "circles/Copy of circles_1.png": "circles/circles_1.png",
              "squares/squares_2 (1).png": "squares/squares_2.png"}
    for copy, original in copies.items():
        shutil.copy(root / original, root / copy)
        os.utime(root / copy, (1_600_000_000, 1_600_000_000))  # older than the original: the name decides
    before = _on_disk(root)
    result = audit(AuditConfig(DataConfig(root, cache_dir=tmp_path / "cache"), features=False))
    offered = [r["path"] for r in suspects(result)]
    assert sorted(offered) == sorted(copies)
    j = Journal(root)
    for rel in offered:
        j.quarantine(rel)
    assert all((root / original).is_file() for original in copies.values())
    assert sorted(p.relative_to(root / QUARANTINE).as_posix() for p in (root / QUARANTINE).rglob("*.png")) == sorted(copies)
    while j.undo() is not None:
        pass
    assert _on_disk(root) == before


def test_quarantining_the_offered_copy_of_a_leak_leaves_an_honest_validation_set(split_folders):
    """A training photo copied into valid/ (and test/): the page offers the held-out copies, and
    moving them out leaves the training copy in place and no leak for the next audit."""
    train = "train/circles/circles_2.png"
    leaked = ["valid/circles/c.png", "test/circles_c.png"]  # shorter paths than the training copy
    for copy in leaked:
        shutil.copy(split_folders / train, split_folders / copy)

    def audited():
        return audit(AuditConfig(DataConfig(split_folders, cache_dir=split_folders.parent / "cache"), features=False))

    offered = [r["path"] for r in suspects(audited())]
    assert sorted(offered) == sorted(leaked)
    j = Journal(split_folders)
    for rel in offered:
        j.quarantine(rel)
    assert (split_folders / train).is_file()
    assert not any((split_folders / copy).exists() for copy in leaked)
    assert all(f.kind != "leak" for f in audited().findings)
