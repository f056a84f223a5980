"""Moves that can always be undone: an append-only journal written (and fsynced) before each move.

Every action is one move of one file. Its *intent* (source, destination) is made durable first, then
the file is moved, then a *done* record follows. A crash between the two leaves an intent without an
outcome; opening the journal again looks at the disk and records whether the move happened (done) or
not (abort), so each file is in exactly one place. Moves never overwrite: destinations get a free name
(``name_1.jpg``...), and the no-replace move is a hard link then unlink. ``undo`` moves the file of the
latest action back (to a free name if its old place was taken meanwhile).

The page and ``clean --undo`` may run at once on the same folder: each action holds an exclusive lock
(``journal.lock``, next to the journal) from reading the journal to its done record, and decides from
what the file says then, never from what this process remembers.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vistrain.data.layout import label_folder

QUARANTINE = ".vistrain-quarantine"
JOURNAL = "journal.jsonl"
LOCK = "journal.lock"
MANIFEST = "manifest.json"


class CleanError(ValueError):
    """A review action that cannot be carried out; the message names the file and why."""


def safe_path(root: Path, rel: str, must_exist: bool = True) -> Path:
    """``rel`` (from a browser or a journal) as a path inside ``root``; anything that could leave it is refused:
    absolute paths, ``..``, and symlinks (of the file or of any folder on the way) pointing outside."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise CleanError(f"refused path {rel!r}: empty or malformed")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or "\\" in rel:
        raise CleanError(f"refused path {rel!r}: only paths relative to the data folder, without '..'")
    base = root.resolve()
    full = base / p
    if not full.resolve().is_relative_to(base):  # resolve() follows every symlink on the way
        raise CleanError(f"refused path {rel!r}: it leads outside the data folder {base}")
    if must_exist and not full.is_file():
        raise CleanError(f"{rel}: no such file in {base}")
    return full


def free_name(dest: Path) -> Path:
    """``dest``, or ``stem_1.ext``, ``stem_2.ext``... whichever does not exist yet."""
    n, cand = 1, dest
    while cand.exists() or cand.is_symlink():
        cand = dest.with_name(f"{dest.stem}_{n}{dest.suffix}")
        n += 1
    return cand


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_no_replace(src: Path, dst: Path) -> None:
    """Move without ever replacing ``dst``: link (fails if ``dst`` exists), then unlink the source."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise CleanError(f"{dst} exists already; nothing was moved") from None
    except OSError:
        # File systems without hard links: check, then rename (the journal still guards the move).
        if dst.exists():
            raise CleanError(f"{dst} exists already; nothing was moved") from None
        os.rename(src, dst)
    else:
        os.unlink(src)
    _fsync_dir(dst.parent)
    _fsync_dir(src.parent)


class Journal:
    """Relabel, quarantine and undo for the files under ``root``; recovers an interrupted move on open.

    ``fault``: called with "intent" (after the intent is durable) and "moved" (after the move, before
    the done record); tests pass a function that raises there to simulate a crash.
    """

    def __init__(self, root: Path | str, fault: Callable[[str], None] | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise CleanError(f"{root}: not a folder")
        self.folder = self.root / QUARANTINE
        self.path = self.folder / JOURNAL
        self.fault = fault
        self.recovered: list[str] = []
        self._entries: list[dict] = []
        # The page's requests run on worker threads that share this object's entries.
        self._mutex = threading.Lock()
        self.refresh()

    # -- the log ---------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, write: bool) -> Iterator[None]:
        """Exclusive use of the journal, with the entries re-read from the file: another process
        (the page, ``clean --undo``) may have written since this one last looked."""
        with self._mutex:
            if not write and not self.folder.is_dir():
                # Nothing reviewed yet; a mere look should not create the quarantine folder.
                self._entries = []
                yield
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._read()
                # Under the lock no live process is halfway through a move, so an intent without
                # an outcome is one whose process died: settle it now, not only at the next start.
                self._recover()
                yield
            finally:
                os.close(fd)  # releases the lock

    def refresh(self) -> None:
        """Re-read the journal from the file (what another process did shows from now on)."""
        with self._locked(write=False):
            pass

    def _read(self) -> None:
        if not self.path.exists():
            self._entries = []
            return
        text = self.path.read_text()
        entries = []
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a record cut short by a crash: its move never started
        self._entries = entries  # whole, so a thread reading meanwhile never sees half a journal
        if text and not text.endswith("\n"):
            with self.path.open("a") as f:
                f.write("\n")  # so the next record starts on a line of its own

    def _append(self, entry: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._entries.append(entry)

    def _outcomes(self) -> dict[int, str]:
        return {e["id"]: e["op"] for e in self._entries if e["op"] in ("done", "abort")}

    def actions(self) -> list[dict]:
        """Completed actions in order (undo records included)."""
        outcome = self._outcomes()
        return [e for e in self._entries if e["op"] == "intent" and outcome.get(e["id"]) == "done"]

    def undoable(self) -> list[dict]:
        """Completed, not yet undone actions, oldest first; ``undo`` reverses the last one."""
        done = self.actions()
        undone = {e["undoes"] for e in done if e["action"] == "undo"}
        return [e for e in done if e["action"] != "undo" and e["id"] not in undone]

    def location(self, rel: str) -> str:
        """Where the file first seen at ``rel`` is now, following every completed move."""
        for e in self.actions():
            if e["src"] == rel:
                rel = e["dst"]
        return rel

    def reviewed(self) -> dict[str, str]:
        """Current path -> the action in effect on it (keep, relabel or quarantine)."""
        return {e["dst"]: e["action"] for e in self.undoable()}

    def _recover(self) -> None:
        outcome = self._outcomes()
        before = len(self.recovered)
        for e in [e for e in self._entries if e["op"] == "intent" and e["id"] not in outcome]:
            src, dst = self.root / e["src"], self.root / e["dst"]
            if src == dst:  # a keep: nothing moved, so nothing to finish
                self._append({"op": "abort", "id": e["id"], "recovered": True})
                self.recovered.append(f"{e['action']} of {e['src']}: not recorded (review it again)")
                continue
            if dst.exists() and src.exists() and os.path.samefile(src, dst):
                os.unlink(src)  # crashed between link and unlink: finish the move
                _fsync_dir(src.parent)
            if dst.exists() and not src.exists():
                self._append({"op": "done", "id": e["id"], "recovered": True})
                self.recovered.append(f"{e['action']} of {e['src']}: completed (it had moved before the stop)")
            else:
                self._append({"op": "abort", "id": e["id"], "recovered": True})
                self.recovered.append(f"{e['action']} of {e['src']}: not applied (it had not moved before the stop)")
        if len(self.recovered) > before:
            self._write_manifest()

    # -- actions ---------------------------------------------------------------------------------
    def _move(self, action: str, src: Path, dst: Path, **extra) -> dict:
        entry = {"op": "intent", "id": self._next_id(), "action": action, "time": time.time(),
                 "src": src.relative_to(self.root).as_posix(), "dst": dst.relative_to(self.root).as_posix(), **extra}
        self._append(entry)
        self._hook("intent")
        if src != dst:  # keep, and the undo of a keep, move nothing
            try:
                move_no_replace(src, dst)
            except (OSError, CleanError):
                self._append({"op": "abort", "id": entry["id"]})
                raise
        self._hook("moved")
        self._append({"op": "done", "id": entry["id"]})
        if action == "quarantine" or (action == "undo" and src.is_relative_to(self.folder)):
            self._write_manifest()
        return entry

    def _hook(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    def _next_id(self) -> int:
        return 1 + max((e["id"] for e in self._entries), default=0)

    def _dataset_file(self, rel: str) -> Path:
        src = safe_path(self.root, rel)
        if src.is_relative_to(self.folder):
            raise CleanError(f"{rel}: already in the quarantine")
        return src

    def relabel(self, rel: str, label: str, classes: list[str] | None = None) -> dict:
        """Move ``rel`` from its class folder to the sibling folder ``label``.

        With ``classes``, the class folder is the outermost folder above ``rel`` named like a class
        (the one that gives the label, see data.layout), so a photo in a sub-folder (``cats/2019/x.jpg``,
        a cat) moves to ``dogs/x.jpg``: moved to ``cats/dogs/`` it would still read as a cat. Undo
        puts it back in its sub-folder.
        """
        # Checked before the lock as well, so a refused request leaves no quarantine folder behind;
        # checked again under it, where another process can no longer move the file.
        self._class_folder(rel, label, classes)
        with self._locked(write=True):
            src, folder = self._class_folder(rel, label, classes)
            return self._move("relabel", src, free_name(folder.parent / label / src.name),
                              label_from=folder.name, label_to=label)

    def _class_folder(self, rel: str, label: str, classes: list[str] | None) -> tuple[Path, Path]:
        """``rel`` as a path, and the class folder it leaves; refused as in :meth:`relabel`."""
        src = self._dataset_file(rel)
        if classes is not None and label not in classes:
            raise CleanError(f"{label!r} is not one of the classes: {', '.join(classes)}")
        if not label or label.startswith(".") or "/" in label or "\\" in label or label == "..":
            raise CleanError(f"{label!r} is not a valid class folder name")
        folder = src.parent
        if classes is not None:
            found = label_folder(src.relative_to(self.root), classes)
            folder = self.root / found if found else self.root
        if folder == self.root:
            raise CleanError(f"{rel}: not in a class folder, so it cannot be relabelled by moving it")
        if folder.name == label:
            raise CleanError(f"{rel} is labelled {label!r} already")
        return src, folder

    def keep(self, rel: str) -> dict:
        """Record that ``rel`` was reviewed and is right as it is (moves nothing; undo forgets it)."""
        self._dataset_file(rel)  # a refused path leaves no quarantine folder behind
        with self._locked(write=True):
            src = self._dataset_file(rel)
            return self._move("keep", src, src)

    def quarantine(self, rel: str) -> dict:
        """Move ``rel`` to ``DATA/.vistrain-quarantine/<same relative path>``."""
        self._dataset_file(rel)  # a refused path leaves no quarantine folder behind
        with self._locked(write=True):
            src = self._dataset_file(rel)
            return self._move("quarantine", src, free_name(self.folder / src.relative_to(self.root)))

    def undo(self) -> dict | None:
        """Reverse the latest action still in effect, as the journal file records it (another process
        may have undone or added actions since); None when there is nothing to undo."""
        if not self.folder.is_dir():
            return None  # nothing was ever done here; no need to create the folder to say so
        with self._locked(write=True):
            return self._undo()

    def _undo(self) -> dict | None:
        stack = self.undoable()
        if not stack:
            return None
        last = stack[-1]
        if last["action"] == "keep":
            same = self.root / last["src"]
            return self._move("undo", same, same, undoes=last["id"], undoes_action="keep")
        src = safe_path(self.root, last["dst"], must_exist=False)
        if not src.is_file():
            raise CleanError(f"cannot undo the {last['action']} of {last['src']}: {last['dst']} is gone")
        dst = free_name(safe_path(self.root, last["src"], must_exist=False))
        return self._move("undo", src, dst, undoes=last["id"], undoes_action=last["action"])

    def _write_manifest(self) -> None:
        """What sits in the quarantine and where it came from (derived from the journal)."""
        where: dict[str, dict] = {}
        for e in self.actions():
            if e["action"] == "quarantine":
                where[e["dst"]] = {"original": e["src"], "time": e["time"], "action": e["id"]}
            elif e["action"] == "undo" and e["src"] in where:
                where.pop(e["src"])
        tmp = self.folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps({"version": 1, "files": where}, indent=2) + "\n")
        os.replace(tmp, self.folder / MANIFEST)
