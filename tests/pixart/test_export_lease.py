"""``export-pixart`` holds its destination's lease as runs hold theirs (issue 10.1): a second
export into a folder being written is refused at once, exit 2, naming the first, whose output is
whole."""

from __future__ import annotations

from pathlib import Path

from recaption.pixart.export import export_pixart
from tests.cli.test_export_lease import second_is_refused_while_first_writes, tree


def test_a_second_export_pixart_into_a_folder_being_written_is_refused(features, tmp_path: Path) -> None:
    """Before: with no lease (and no data_info.json yet), the second export wrote the same files
    as the first, alongside it, exit 0."""
    ref, dest = tmp_path / "ref", tmp_path / "dest"
    export_pixart(features.url, str(ref))
    args = ["export-pixart", features.url, str(dest)]
    second_is_refused_while_first_writes(args, [*args, "--overwrite"], dest, tmp_path / "gate")
    assert tree(dest) == tree(ref)  # the first's output whole, and its lease given back
