"""Folders written whole (improve_lib.core.folders): built beside the target, swapped in when complete, and an
existing folder replaced only when this tool wrote every file in it."""
from __future__ import annotations

import pytest

from improve_lib.core import folders
from improve_lib.core.errors import StudyInputError


def _build(target, files):
    with folders.building(target, "a test export") as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
    return target


def _siblings(target):
    return sorted(p.name for p in target.parent.iterdir())


def test_a_new_folder_is_marked_and_a_marked_one_replaced_whole(tmp_path):
    target = _build(tmp_path / "out", {"a.txt": "1", "sub/b.txt": "2"})
    assert sorted(folders.foreign(target)) == [] and (target / folders.MARKER).is_file()
    _build(target, {"c.txt": "3"})  # the tool's own folder: replaced, old files gone
    assert sorted(p.name for p in target.iterdir()) == [folders.MARKER, "c.txt"]
    assert _siblings(target) == ["out"]


@pytest.mark.parametrize("where", ["mine.txt", "sub/dr_smith.csv"])
def test_a_folder_with_a_users_file_is_refused_before_any_work(tmp_path, where):
    target = _build(tmp_path / "out", {"a.txt": "1", "sub/b.txt": "2"})
    (target / where).write_text("the user's")
    with pytest.raises(StudyInputError, match=where.replace("/", ".")):
        with folders.building(target, "a test export"):
            pytest.fail("no work may start")
    assert (target / where).read_text() == "the user's" and (target / "a.txt").read_text() == "1"
    unmarked = tmp_path / "plain"
    unmarked.mkdir()
    (unmarked / "mine.txt").write_text("x")
    with pytest.raises(StudyInputError, match=r"1 file\(s\) that this tool did not write there \(mine.txt\)"):
        _build(unmarked, {"a.txt": "1"})
    assert sorted(p.name for p in unmarked.iterdir()) == ["mine.txt"]


def test_a_failure_while_building_leaves_the_old_folder_and_no_partial_sibling(tmp_path):
    target = _build(tmp_path / "out", {"a.txt": "old"})
    for error in (RuntimeError("verification failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with folders.building(target, "a test export") as tmp:
                (tmp / "a.txt").write_text("new, half written")
                raise error
        assert (target / "a.txt").read_text() == "old" and _siblings(target) == ["out"]


def test_a_file_in_place_of_the_folder_is_not_replaced(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(StudyInputError, match="did not write"):
        _build(tmp_path / "out", {"a.txt": "1"})
    assert (tmp_path / "out").read_text() == "a file"
